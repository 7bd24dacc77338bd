//! The command line: `falra serve`, `falra admin init`, and client commands that talk to a
//! running daemon over HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run tenants' Python functions over HTTP, each call in a fresh isolated child process.
#[derive(Debug, Parser)]
#[command(name = "falra", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once per process: the size of `serve`'s flags costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon.
    Serve(ServeArgs),
    /// Set up operator access.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage tenants (talks to a running daemon).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage tenants' tokens (talks to a running daemon).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Change a tenant's limits (talks to a running daemon).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage tenants' secrets, sealed at rest (talks to a running daemon).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Upload a private module for a tenant: `falra upload caro helpers.py [--as pkg.helpers]`.
    Upload(UploadArgs),
    /// Environment variables of a tenant's calls and jobs: set, list, remove (talks to a
    /// running daemon).
    #[command(subcommand)]
    Env(EnvCommand),
    /// A tenant's uploaded modules: list, remove (talks to a running daemon).
    #[command(subcommand)]
    Modules(ModulesCommand),
    /// Named plans: complete policies tenants are on (talks to a running daemon).
    #[command(subcommand)]
    Plan(PlanCommand),
    /// The nodes serving the store (talks to a running daemon).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Calls per tenant and function over a time range (talks to a running daemon).
    Usage(UsageArgs),
    /// Operator actions and deploys, newest first (talks to a running daemon).
    Audit(AuditArgs),
    /// A tenant's callable functions with their signatures, and the modules that fail to
    /// load (its active version, or `--version` by id or commit).
    Functions {
        tenant: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Shell completions: `falra completions bash > /etc/bash_completion.d/falra`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// A tenant's versions, newest first: commit, uploads, when made and last activated.
    Versions {
        tenant: String,
        #[command(flatten)]
        client: AdminClient,
    },
    /// A call's status, error, usage and logs by its call id, or `--tenant T --follow` for
    /// every new call's as it ends.
    Logs(LogsArgs),
    /// Call a function: `falra call falra_test_add.add int_a=1 int_b=2`.
    Call(CallArgs),
    /// Background jobs: submit, follow, cancel, list (talks to a running daemon).
    #[command(subcommand)]
    Job(JobCommand),
    /// Jobs on a cron schedule (talks to a running daemon).
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Runs a built-in from a request on stdin (what the daemon's sandboxed children run).
    #[command(hide = true)]
    Builtin,
}

/// A tenant client: the daemon's URL and a token with the `jobs` scope.
#[derive(Debug, Args)]
pub struct JobClient {
    #[arg(long, env = "FALRA_URL", default_value = "http://127.0.0.1:8700", value_parser = base_url)]
    pub url: String,
    #[arg(long, env = "FALRA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the daemon's JSON answer instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Queue a job: `falra job submit etl.run day=2026-12-01`; prints the job (`--wait` follows it).
    Submit {
        /// `module.function`.
        function: String,
        /// Keyword arguments as key=value; values are JSON when they parse, strings otherwise.
        kwargs: Vec<String>,
        /// A resubmission with the same key returns the first job instead of a new one.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Run this version instead of the one active when the job starts.
        #[arg(long)]
        version: Option<String>,
        /// Attempts for failures of the node (1–10).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// POSTed the job once it ends, signed with the tenant's webhook secret.
        #[arg(long)]
        callback_url: Option<String>,
        /// Wait for the job's end, drawing its progress.
        #[arg(long)]
        wait: bool,
        #[command(flatten)]
        client: JobClient,
    },
    /// Show a job.
    Status {
        id: String,
        #[command(flatten)]
        client: JobClient,
    },
    /// Wait for a job's end, drawing its progress; exits non-zero unless it succeeded.
    Wait {
        id: String,
        /// Give up after this many seconds (the job goes on).
        #[arg(long)]
        timeout_secs: Option<u64>,
        #[command(flatten)]
        client: JobClient,
    },
    /// Cancel a job: a running one is stopped, whichever node runs it (asks first, unless
    /// `--yes`).
    Cancel {
        id: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: JobClient,
    },
    /// List the tenant's jobs, newest first.
    List {
        /// queued, running, succeeded, failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        #[command(flatten)]
        client: JobClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create one: `falra schedule create "0 3 * * *" etl.nightly region=eu` (UTC; six fields
    /// with seconds first also work).
    Create {
        cron: String,
        /// `module.function`.
        function: String,
        /// Keyword arguments as key=value; values are JSON when they parse, strings otherwise.
        kwargs: Vec<String>,
        /// Run this version instead of the one active at each tick.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        client: JobClient,
    },
    /// List the tenant's schedules.
    List {
        #[command(flatten)]
        client: JobClient,
    },
    /// Stop a schedule's ticks from making jobs.
    Pause {
        id: String,
        #[command(flatten)]
        client: JobClient,
    },
    /// Start a paused schedule again, from its next tick.
    Resume {
        id: String,
        #[command(flatten)]
        client: JobClient,
    },
    /// Remove a schedule (the jobs it made stay; asks first, unless `--yes`).
    Remove {
        id: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: JobClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List the nodes, whether each is alive, and which one answered.
    List {
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create or change a plan: `falra plan set annual memory_mb=1024 cpu_seconds_per_month=100000`.
    Set {
        name: String,
        /// field=value pairs.
        #[arg(required = true)]
        fields: Vec<String>,
        #[command(flatten)]
        client: AdminClient,
    },
    /// List plans.
    List {
        #[command(flatten)]
        client: AdminClient,
    },
    /// Remove a plan no tenant is on (asks first, unless `--yes`).
    Remove {
        name: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// From this time (RFC 3339 or a date; default: the start of this month).
    #[arg(long)]
    pub from: Option<String>,
    /// Up to this time, exclusive (default: now).
    #[arg(long)]
    pub to: Option<String>,
    /// CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    #[command(flatten)]
    pub client: AdminClient,
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// At most this many events.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Only events since: an RFC 3339 time, a date (2026-12-01, UTC), or a span back from
    /// now (30m, 2h, 7d).
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub client: AdminClient,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The call's id (`call_id` in its answer).
    #[arg(required_unless_present = "follow", conflicts_with = "follow")]
    pub call_id: Option<String>,
    /// The tenant to follow.
    #[arg(long, requires = "follow")]
    pub tenant: Option<String>,
    /// Print each new call of `--tenant` with its logs as it ends, until interrupted.
    #[arg(long, requires = "tenant")]
    pub follow: bool,
    #[command(flatten)]
    pub client: AdminClient,
}

#[derive(Debug, Args)]
pub struct UploadArgs {
    pub tenant: String,
    /// The module's `.py` source.
    pub file: PathBuf,
    /// The dotted module name (default: the file's name without `.py`).
    #[arg(long = "as")]
    pub module: Option<String>,
    /// Upload even over a module or package of the tenant's repository of that name.
    #[arg(long)]
    pub replace: bool,
    /// Activate the new version even if some of its modules fail to compile or import.
    #[arg(long)]
    pub force: bool,
    /// A tenant token with the `deploy` scope, used when no operator token is given (the
    /// upload then goes to the token's own tenant, which must be TENANT).
    #[arg(long, env = "FALRA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[command(flatten)]
    pub client: AdminClient,
}

#[derive(Debug, Subcommand)]
pub enum EnvCommand {
    /// Set variables: `falra env set caro REGION=eu LEVEL=debug` (the others stay).
    Set {
        tenant: String,
        /// NAME=value pairs.
        #[arg(required = true)]
        vars: Vec<String>,
        #[command(flatten)]
        client: AdminClient,
    },
    /// The tenant's variables.
    List {
        tenant: String,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Remove variables by name (asks first, unless `--yes`).
    Remove {
        tenant: String,
        #[arg(required = true)]
        names: Vec<String>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum ModulesCommand {
    /// A tenant's uploaded modules.
    List {
        tenant: String,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Remove an upload (a new version is made without it).
    Remove {
        tenant: String,
        module: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Set a secret: `falra secret set caro s3 '{"access_key_id": "…", …}'` (`-` reads stdin).
    Set {
        tenant: String,
        key: String,
        /// JSON, or a plain string; `-` reads the value from stdin.
        value: String,
        /// Hand it to the tenant's code too, as the environment variable KEY (the value is
        /// taken as text; masked as *** in the calls' logs and errors). Without --env or
        /// --no-env a secret stays where it was exposed.
        #[arg(long, conflicts_with = "no_env")]
        env: bool,
        /// Take it away from the tenant's code: only the node uses it.
        #[arg(long)]
        no_env: bool,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Remove a secret (asks first, unless `--yes`).
    Remove {
        tenant: String,
        key: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: AdminClient,
    },
    /// List a tenant's secret names (never their values).
    List {
        tenant: String,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file of these options: keys are the flags' names (`max-children = 32`, `-` or
    /// `_`), lists for repeatable ones. A flag given wins over its FALRA_* variable, which
    /// wins over the file. See packaging/falra.toml.
    #[arg(long, env = "FALRA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Seconds calls in flight at shutdown (SIGTERM, SIGINT) may take to finish; those still
    /// running then are stopped. A second signal stops them at once.
    #[arg(long, env = "FALRA_SHUTDOWN_GRACE", default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace: u64,
    /// Where the store, versions and checkouts live.
    #[arg(long, env = "FALRA_DATA_DIR", default_value = "./falra-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to listen on.
    #[arg(long, env = "FALRA_LISTEN", default_value = "127.0.0.1:8700")]
    pub listen: SocketAddr,
    /// The Python interpreter calls run in (a real binary, not a shell shim).
    #[arg(long, env = "FALRA_PYTHON", default_value = "/usr/bin/python3")]
    pub python: PathBuf,
    /// Calls running at once on this node, at most; more are answered `503 overloaded`.
    #[arg(long, env = "FALRA_MAX_CHILDREN", default_value_t = 64)]
    pub max_children: usize,
    /// Failed authentications a client address may make per minute before it is refused
    /// (`429 rate_limited`) until its allowance refills.
    #[arg(long, default_value_t = 120, env = "FALRA_AUTH_FAILURES_PER_MINUTE")]
    pub auth_failures_per_minute: u32,
    /// Let built-ins reach loopback, private and link-local addresses (their downloads and S3
    /// endpoints); off by default so a tenant cannot aim them at internal services.
    #[arg(long, env = "FALRA_EGRESS_ALLOW_PRIVATE", value_parser = clap::builder::BoolishValueParser::new())]
    pub egress_allow_private: bool,
    /// A network (`address/prefix`) tenants' outbound connections may reach although it is not
    /// public: an internal package index, a private S3 endpoint. Repeatable; narrower than
    /// --egress-allow-private.
    #[arg(long, env = "FALRA_EGRESS_ALLOW_NET", value_delimiter = ',')]
    pub egress_allow_net: Vec<falra_builtins::etl::net::IpNet>,
    /// The largest archive a built-in downloads, in bytes.
    #[arg(long, default_value_t = 4 << 30, env = "FALRA_ETL_MAX_DOWNLOAD_BYTES")]
    pub etl_max_download_bytes: u64,
    /// A directory where the `write_to_dir` step may write (each tenant under its own name).
    #[arg(long, env = "FALRA_ETL_OUTPUT_DIR")]
    pub etl_output_dir: Option<PathBuf>,
    /// Open client connections on this node, at most (kept below the descriptor limit, with a
    /// reserve for children); one past it is closed at once.
    #[arg(long, default_value_t = 10_000, env = "FALRA_MAX_CONNECTIONS")]
    pub max_connections: usize,
    /// Open client connections from one address (an IPv6 client by its /64), at most.
    #[arg(long, default_value_t = 256, env = "FALRA_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: usize,
    /// Seconds a client may take to send a request's head, or stay idle between requests.
    #[arg(long, default_value_t = 10, env = "FALRA_HEADER_TIMEOUT_SECS")]
    pub header_timeout_secs: u64,
    /// Seconds a client may take to send a request's body.
    #[arg(long, default_value_t = 30, env = "FALRA_BODY_TIMEOUT_SECS")]
    pub body_timeout_secs: u64,
    /// The package index virtualenv builds download wheels from, through the egress gateway
    /// (`none`: only the --pip-find-links locations). Tenants cannot name another.
    #[arg(long, env = "FALRA_PIP_INDEX_URL", default_value = crate::config::DEFAULT_PIP_INDEX)]
    pub pip_index_url: String,
    /// A page or directory URL of wheels builds may also use (pip's --find-links); repeatable.
    #[arg(long, env = "FALRA_PIP_FIND_LINKS", value_delimiter = ',')]
    pub pip_find_links: Vec<String>,
    /// The `uv` virtualenv builds run (`bash scripts/install-uv.sh` installs the pinned one
    /// here); if it is missing or `none`, builds use pip, under the same rules.
    #[arg(long, env = "FALRA_UV", default_value = crate::config::DEFAULT_UV)]
    pub uv: String,
    /// The most the node's wheel cache (`<data-dir>/wheels`) holds, in MiB; the least
    /// recently used wheels are removed past it.
    #[arg(long, env = "FALRA_WHEEL_CACHE_MB", default_value_t = 10_240)]
    pub wheel_cache_mb: u64,
    /// Background jobs this node runs at once, at most (each also takes a call's place in
    /// admission while it runs).
    #[arg(long, env = "FALRA_JOB_WORKERS", default_value_t = 4)]
    pub job_workers: usize,
    /// Milliseconds a job's lease holds without renewal: a job whose node has been silent this
    /// long is rescued by another node (renewed every third of it).
    #[arg(long, env = "FALRA_JOB_LEASE_MS", default_value_t = 15_000)]
    pub job_lease_ms: u64,
    /// Hours an ended job and its result are kept before they are removed.
    #[arg(long, env = "FALRA_JOB_RETENTION_HOURS", default_value_t = 168)]
    pub job_retention_hours: u64,
    /// Attempts a job gets (for failures of the node, never of the function) unless it asks for
    /// fewer or more with `?max_attempts=` (at most 10).
    #[arg(long, default_value_t = 3, env = "FALRA_JOB_MAX_ATTEMPTS")]
    pub job_max_attempts: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20, env = "FALRA_MAX_BODY_BYTES")]
    pub max_body_bytes: usize,
    /// Largest answer a function may return, in bytes of JSON.
    #[arg(long, default_value_t = 6 << 20, env = "FALRA_MAX_RESULT_BYTES")]
    pub max_result_bytes: usize,
    /// Most bytes of a function's printed output kept as `logs`.
    #[arg(long, default_value_t = 64 << 10, env = "FALRA_MAX_LOG_BYTES")]
    pub max_log_bytes: usize,
    /// How many versions of each tenant are kept (the active one always is); older ones are
    /// removed at the next sync once no call uses them.
    #[arg(long, default_value_t = 10, env = "FALRA_KEEP_VERSIONS")]
    pub keep_versions: usize,
    /// Create a `demo` tenant from the bundled example and print a token and a ready curl line.
    #[arg(long, env = "FALRA_DEMO", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: bool,
    /// Isolate every call (namespaces, cgroups, seccomp; needs root). `off` runs calls as plain
    /// child processes with the daemon's privileges: for development and measurements only.
    #[arg(long, value_enum, default_value = "on", env = "FALRA_SANDBOX")]
    pub sandbox: SandboxMode,
    /// Leave the host's cgroup2 mount options alone. By default the daemon turns on
    /// `favordynmods` there, so that moving each call into its cgroup does not wait for an RCU
    /// grace period (see docs/security.md).
    #[arg(long, env = "FALRA_NO_CGROUP_TUNING", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_cgroup_tuning: bool,
    /// Do not start children ahead of calls. By default, for each tenant version called in the
    /// last minute, one child is kept started and waiting, so the next call skips the
    /// interpreter's start-up.
    #[arg(long, env = "FALRA_NO_PREWARM", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_prewarm: bool,
    /// Exec a fresh interpreter for every call's child. By default each call's process is
    /// forked from a warm interpreter that has loaded the runner and no tenant code, then
    /// sandboxed exactly as an exec'd child is (see docs/security.md).
    #[arg(long, env = "FALRA_NO_ZYGOTE", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_zygote: bool,
    /// The most preload zygotes (one per tenant version whose policy preloads modules) this
    /// node keeps; past it, or past --preload-memory-mb, the least recently used is stopped.
    /// 0 turns preloading off.
    #[arg(long, env = "FALRA_PRELOAD_ZYGOTES", default_value_t = 16)]
    pub preload_zygotes: usize,
    /// The most resident memory (MiB) the preload zygotes of this node take together.
    #[arg(long, env = "FALRA_PRELOAD_MEMORY_MB", default_value_t = 4096)]
    pub preload_memory_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// The operator tokens, without their secrets (revoke with `falra token revoke ID`).
    Tokens {
        #[command(flatten)]
        client: AdminClient,
    },
    /// Create the first operator token and print it, alone, on stdout (`--force`: another one,
    /// on a store that has one already).
    Init {
        #[arg(long, env = "FALRA_DATA_DIR", default_value = "./falra-data")]
        data_dir: PathBuf,
        /// Make another operator token even though the store has a live one.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Which store a node uses, and the key its secrets are sealed with.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// A PostgreSQL store shared by every node (`postgres://user:password@host:port/db`)
    /// instead of the embedded SQLite file in the data directory.
    #[arg(long, env = "FALRA_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// The key tenant secrets are sealed with (64 hex digits in a file, made if missing).
    /// Every node of a cluster must read the same one. Default: `FALRA_SECRET_KEY` (the hex
    /// itself) if set, else `secret.key` in the data directory (one node only).
    #[arg(long, env = "FALRA_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
}

/// Where the daemon is and who we are to it.
#[derive(Debug, Args, Clone)]
pub struct AdminClient {
    /// The daemon's base URL.
    #[arg(
        long,
        env = "FALRA_URL",
        default_value = "http://127.0.0.1:8700",
        global = true,
        value_parser = base_url
    )]
    pub url: String,
    /// Operator token (from `falra admin init`).
    #[arg(long, env = "FALRA_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
    /// Print the daemon's JSON answer instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Add {
        name: String,
        /// Git repository URL (file:// or https://).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        /// The code root inside the repository.
        #[arg(long)]
        subdir: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        client: AdminClient,
    },
    /// List tenants.
    List {
        #[command(flatten)]
        client: AdminClient,
    },
    /// Show one tenant.
    Show {
        name: String,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Remove a tenant, its tokens and its files (asks first, unless `--yes`).
    Remove {
        name: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Fetch the tenant's branch and make it the active version.
    Sync {
        name: String,
        /// Activate the new version even if some of its modules fail to compile or import.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Change a tenant's repository, branch, code root, plan or webhook secret.
    Set {
        name: String,
        /// Git repository URL (file:// or https://).
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        /// The code root inside the repository.
        #[arg(long)]
        subdir: Option<String>,
        #[arg(long)]
        plan: Option<String>,
        /// The secret GitHub signs push webhooks with.
        #[arg(long)]
        webhook_secret: Option<String>,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Make an earlier version the active one again.
    Rollback {
        name: String,
        /// A version id, or a commit: its SHA or a unique prefix of at least 7 hex digits.
        version: String,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token for a tenant; the token is shown this once.
    Issue {
        tenant: String,
        /// Comma-separated scopes: call, deploy, jobs.
        #[arg(long, default_value = "call", value_delimiter = ',')]
        scopes: Vec<String>,
        #[arg(long, conflicts_with = "expires_at")]
        expires_in_days: Option<u32>,
        /// RFC 3339 time, e.g. 2027-01-01T00:00:00Z.
        #[arg(long)]
        expires_at: Option<String>,
        #[command(flatten)]
        client: AdminClient,
    },
    /// List a tenant's tokens (never their secrets).
    List {
        tenant: String,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Revoke a token by id (asks first, unless `--yes`).
    Revoke {
        id: String,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// A tenant's effective policy, each field with its plan's value and whether the tenant
    /// overrides it.
    Show {
        tenant: String,
        #[command(flatten)]
        client: AdminClient,
    },
    /// Override fields of the tenant's plan: `falra policy set caro timeout_ms=500 memory_mb=256`.
    Set {
        tenant: String,
        /// field=value pairs.
        #[arg(required_unless_present = "reset")]
        fields: Vec<String>,
        /// Give a field back to the plan (repeatable).
        #[arg(long)]
        reset: Vec<String>,
        #[command(flatten)]
        client: AdminClient,
    },
}

#[derive(Debug, Args)]
pub struct CallArgs {
    /// `module.function`.
    pub function: String,
    /// Keyword arguments as key=value (values are JSON when they parse, strings otherwise),
    /// `@file.json` for a JSON object of them in a file, `-` for one on stdin.
    pub kwargs: Vec<String>,
    /// Print the daemon's whole JSON answer (result, call_id, version, logs, usage) instead of
    /// the result alone (with the logs on stderr).
    #[arg(long)]
    pub json: bool,
    #[arg(long, env = "FALRA_URL", default_value = "http://127.0.0.1:8700", value_parser = base_url)]
    pub url: String,
    #[arg(long, env = "FALRA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Lower the time limit for this call.
    #[arg(long)]
    pub timeout_ms: Option<u32>,
    /// Run this version instead of the active one (`?version=`): a version id, or a commit's
    /// SHA or unique prefix of at least 7 hex digits.
    #[arg(long)]
    pub version: Option<String>,
}

/// The daemon's base URL as the clients take it (the Python client too): a scheme is
/// optional (`localhost:8700` means `http://localhost:8700`), a trailing `/` is dropped, and
/// it must have a host.
pub fn base_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim().trim_end_matches('/');
    let url = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let parsed = url::Url::parse(&url).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{raw:?}: the URL must be http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    Ok(url)
}
