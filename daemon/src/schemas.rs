//! The bodies of the HTTP API as schemas, for the OpenAPI document (`openapi.rs`).
//!
//! Request bodies and query strings are documented by the very types the handlers parse
//! (`ToSchema`/`IntoParams` on them, in their modules). What is built here:
//!
//! - the schemas whose truth lives in another crate's data: the error codes
//!   (`ErrorCode::ALL`), a policy's bounds (`falra_policies::policy::RANGES`), the call body's
//!   open keyword arguments — built by hand from that data, so they follow it;
//! - the answers the handlers build as JSON values: one type per answer, named as the
//!   document names it. These can only describe; the test command fuzzes every operation with
//!   schemathesis checking each answer against them, which is what keeps them true.

// The answer types are read by the schema derive only.
#![allow(dead_code)]

use falra_core::error_code::ErrorCode;
use serde_json::Value;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn nullable(t: Type) -> SchemaType {
    SchemaType::from_iter([t, Type::Null])
}

/// `{"ok": false, "error": {"code", "message", "detail"?}, "call_id"?, "logs"?, "usage"?}`.
pub struct Error;

impl PartialSchema for Error {
    fn schema() -> RefOr<Schema> {
        let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        let error = ObjectBuilder::new()
            .property("code", string().enum_values(Some(codes)))
            .required("code")
            .property("message", string())
            .required("message")
            .property(
                "detail",
                ObjectBuilder::new().description(Some("The failure's particulars, by code")),
            );
        ObjectBuilder::new()
            .property(
                "ok",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .enum_values(Some([false])),
            )
            .required("ok")
            .property("error", error)
            .required("error")
            .property("call_id", string())
            .property("logs", string())
            .property(
                "usage",
                ObjectBuilder::new()
                    .description(Some(
                        "What a failed call used (wall_ms, cpu_ms, peak_memory_bytes)",
                    ))
                    .schema_type(Type::Object),
            )
            .into()
    }
}

impl ToSchema for Error {}

/// The call body: `fn`, optionally `token`, and every other key a keyword argument.
pub struct CallBody;

impl PartialSchema for CallBody {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("token", string().description(Some("A tenant token (or Authorization: Bearer)")))
            .property("fn", string().description(Some("module.function (dotted)")).min_length(Some(1)))
            .required("fn")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .description(Some(
                "Keyword arguments beside fn and token; keys starting with //, _comment or 註解 are dropped",
            ))
            .into()
    }
}

impl ToSchema for CallBody {}

/// The integer fields of a policy with their bounds; `patch` makes each optional.
fn policy_object(patch: bool) -> ObjectBuilder {
    let mut o = ObjectBuilder::new();
    for (field, lo, hi) in falra_policies::policy::RANGES {
        o = o.property(
            field,
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(lo))
                .maximum(Some(hi)),
        );
        if !patch {
            o = o.required(field);
        }
    }
    let allow = ObjectBuilder::new()
        .property(
            "allow",
            ArrayBuilder::new()
                .items(string().description(Some("host:port, or *.domain:port")))
                .max_items(Some(falra_policies::egress::MAX_ALLOWED_HOSTS)),
        )
        .required("allow")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let network = OneOfBuilder::new()
        .item(string().enum_values(Some(["none", "host"])))
        .item(allow)
        .description(Some(
            "none (loopback only), host, or {\"allow\": [...]} through the egress gateway",
        ));
    let quota = ObjectBuilder::new()
        .schema_type(nullable(Type::Integer))
        .minimum(Some(1))
        .maximum(Some(falra_policies::policy::MAX_QUOTA_SECONDS))
        .description(Some("CPU seconds per calendar month; null: no quota"));
    let preload = ArrayBuilder::new()
        .items(
            string()
                .pattern(Some(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"))
                .max_length(Some(falra_policies::policy::MAX_PRELOAD_NAME)),
        )
        .max_items(Some(falra_policies::policy::MAX_PRELOAD))
        .description(Some(
            "Modules imported once per version into a zygote that forks each call",
        ));
    o = o
        .property("network", network)
        .property("builtins", ObjectBuilder::new().schema_type(Type::Boolean))
        .property("cpu_seconds_per_month", quota)
        .property("preload", preload);
    if !patch {
        o = o.required("network").required("builtins");
    }
    o
}

/// A tenant's effective policy (its plan with its overrides).
pub struct Policy;

impl PartialSchema for Policy {
    fn schema() -> RefOr<Schema> {
        policy_object(false).into()
    }
}

impl ToSchema for Policy {}

/// Fields of a policy to change; absent fields stay, `reset` puts fields back to the plan's.
pub struct PolicyPatch;

impl PartialSchema for PolicyPatch {
    fn schema() -> RefOr<Schema> {
        policy_object(true)
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for PolicyPatch {}

/// The body of `PUT /admin/v1/tenants/{name}/policy`: a patch, and `reset` to drop overrides.
pub struct PolicyChange;

impl PartialSchema for PolicyChange {
    fn schema() -> RefOr<Schema> {
        let fields: Vec<&str> = falra_policies::policy::RANGES
            .iter()
            .map(|r| r.0)
            .chain(["network", "builtins", "cpu_seconds_per_month", "preload"])
            .collect();
        policy_object(true)
            .property(
                "reset",
                ArrayBuilder::new().items(string().enum_values(Some(fields))),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl ToSchema for PolicyChange {}

/// A call's resources.
#[derive(ToSchema)]
pub struct CallUsage {
    wall_ms: u64,
    cpu_ms: u64,
    peak_memory_bytes: u64,
}

/// A success answer of `/v1/call`.
#[derive(ToSchema)]
pub struct CallOk {
    /// Always true here.
    ok: bool,
    /// The function's return value, as JSON.
    #[schema(value_type = Value)]
    result: Value,
    call_id: String,
    version: String,
    logs: String,
    usage: CallUsage,
}

/// A tenant's environment variables.
#[derive(ToSchema)]
pub struct EnvVars {
    env: std::collections::BTreeMap<String, String>,
}

/// A recorded call's status.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum CallStatus {
    Succeeded,
    Failed,
}

/// Which stream a line of logs was written to (`falra`: the marker where logs were cut).
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum LogStream {
    Stdout,
    Stderr,
    Falra,
}

#[derive(ToSchema)]
pub struct LogLine {
    stream: LogStream,
    text: String,
}

#[derive(ToSchema)]
pub struct CallError {
    /// The answer's error code.
    code: String,
    message: Option<String>,
}

/// A recorded call (`GET /v1/calls/{call_id}`).
#[derive(ToSchema)]
pub struct CallRecordView {
    call_id: String,
    tenant: String,
    #[schema(rename = "fn")]
    function: String,
    version: Option<String>,
    status: CallStatus,
    error: Option<CallError>,
    usage: CallUsage,
    at: String,
    /// What the call printed, stdout and stderr in the order written (empty once pruned).
    logs: String,
    /// The same, line by line with each line's stream.
    lines: Vec<LogLine>,
}

#[derive(ToSchema)]
pub struct VersionEntry {
    id: String,
    /// `git`, `upload` or `builtin`.
    source: String,
    /// The git commit it was built from (none: uploads only).
    commit: Option<String>,
    /// The modules it holds from uploads.
    uploads: Vec<String>,
    created_at: String,
    /// When it last became the active version.
    activated_at: Option<String>,
    active: bool,
    /// The steps of the deploy that made it (`{"step", "at_ms", "ms", "ok", "detail"?}`);
    /// null for versions made before deploys were logged.
    deploy_log: Option<Vec<Value>>,
    /// The packages its virtualenv was built from, resolved when it was first built and
    /// rebuilt exactly on a rollback (empty without requirements).
    packages: Vec<PackageEntry>,
}

#[derive(ToSchema)]
pub struct PackageEntry {
    /// Normalised (PEP 503).
    name: String,
    version: String,
    /// The wheel's file name (empty for a pip build).
    wheel: String,
    /// The wheel's SHA-256, in hex (empty for a pip build).
    sha256: String,
    /// Where the wheel was fetched from.
    url: String,
}

#[derive(ToSchema)]
pub struct Versions {
    versions: Vec<VersionEntry>,
    active: Option<String>,
}

#[derive(ToSchema)]
pub struct FunctionEntry {
    name: String,
    signature: String,
    doc: String,
}

#[derive(ToSchema)]
pub struct Functions {
    version: String,
    functions: Vec<FunctionEntry>,
    /// Modules that failed to import, with why.
    #[schema(value_type = Vec<Object>)]
    errors: Vec<Value>,
}

#[derive(ToSchema)]
pub struct ModuleEntry {
    module: String,
    sha256: String,
    bytes: u64,
    updated_at: String,
}

#[derive(ToSchema)]
pub struct Modules {
    modules: Vec<ModuleEntry>,
}

#[derive(ToSchema)]
pub struct Uploaded {
    module: String,
    sha256: String,
    /// The new version, active.
    version: String,
    functions: Vec<FunctionEntry>,
}

#[derive(ToSchema)]
pub struct ModuleRemoved {
    deleted: String,
    /// The new version, active.
    version: String,
}

#[derive(ToSchema)]
pub struct Tenant {
    name: String,
    repo: Option<String>,
    branch: String,
    subdir: Option<String>,
    plan: String,
    has_webhook_secret: bool,
    #[schema(value_type = Policy)]
    policy: Value,
    #[schema(value_type = PolicyPatch)]
    overrides: Value,
    active_version: Option<String>,
    uid: u32,
    created_at: String,
}

#[derive(ToSchema)]
pub struct TenantList {
    tenants: Vec<Tenant>,
}

/// A deploy's outcome: the version now active.
#[derive(ToSchema)]
pub struct Deployed {
    version: String,
    /// The deploy's steps: `{"step", "at_ms", "ms", "ok", "detail"?}` each.
    steps: Vec<Value>,
}

/// A rollback's outcome: the version now active (nothing was deployed, so no steps).
#[derive(ToSchema)]
pub struct RolledBack {
    version: String,
}

#[derive(ToSchema)]
pub struct Deleted {
    deleted: String,
}

#[derive(ToSchema)]
pub struct IssuedToken {
    id: String,
    /// Shown once: only its hash is kept.
    token: String,
    scopes: Vec<String>,
    expires_at: Option<String>,
}

#[derive(ToSchema)]
pub struct TokenEntry {
    id: String,
    prefix: String,
    scopes: Vec<String>,
    expires_at: Option<String>,
    revoked_at: Option<String>,
    created_at: String,
    last_used_at: Option<String>,
}

#[derive(ToSchema)]
pub struct TokenList {
    tokens: Vec<TokenEntry>,
}

#[derive(ToSchema)]
pub struct Revoked {
    revoked: String,
}

#[derive(ToSchema)]
pub struct SecretStored {
    tenant: String,
    key: String,
    updated_at: String,
    /// `env` (read by the tenant's code) or `none`.
    expose: String,
}

#[derive(ToSchema)]
pub struct SecretEntry {
    key: String,
    updated_at: String,
    /// `env` (read by the tenant's code) or `none`.
    expose: String,
}

#[derive(ToSchema)]
pub struct SecretList {
    secrets: Vec<SecretEntry>,
}

#[derive(ToSchema)]
pub struct Plan {
    name: String,
    #[schema(value_type = Policy)]
    policy: Value,
}

#[derive(ToSchema)]
pub struct PlanList {
    plans: Vec<Plan>,
}

#[derive(ToSchema)]
pub struct Node {
    id: String,
    address: Option<String>,
    version: String,
    started_at: String,
    heartbeat_at: String,
    alive: bool,
    /// The node that answered.
    this: bool,
}

#[derive(ToSchema)]
pub struct NodeList {
    nodes: Vec<Node>,
}

#[derive(ToSchema)]
pub struct Usage {
    from: String,
    to: String,
    /// Per tenant: calls, ok, errors, wall_ms, cpu_ms, deploy_cpu_ms, bytes_in, bytes_out.
    #[schema(value_type = Vec<Object>)]
    tenants: Vec<Value>,
    /// Per tenant and function, with max_peak_memory_bytes.
    #[schema(value_type = Vec<Object>)]
    functions: Vec<Value>,
}

#[derive(ToSchema)]
pub struct AuditEvent {
    id: String,
    at: String,
    /// The token that acted (`push` for a webhook delivery).
    actor: String,
    action: String,
    tenant: Option<String>,
    #[schema(value_type = Object)]
    detail: Value,
    remote: Option<String>,
}

#[derive(ToSchema)]
pub struct AuditList {
    events: Vec<AuditEvent>,
}

#[derive(ToSchema)]
pub struct JobProgress {
    #[schema(minimum = 0, maximum = 1)]
    fraction: f64,
    #[schema(required = false)]
    message: String,
    #[schema(required = false)]
    rows: u64,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

#[derive(ToSchema)]
pub struct Job {
    job_id: String,
    status: JobStatus,
    #[schema(rename = "fn")]
    function: String,
    version: Option<String>,
    attempts: u32,
    max_attempts: u32,
    /// The node running the job, or the one that ran it.
    node: Option<String>,
    progress: Option<JobProgress>,
    #[schema(required = false)]
    idempotency_key: String,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    /// Once the job ended: the call's answer.
    #[schema(required = false)]
    ok: bool,
    #[schema(value_type = Value, required = false)]
    result: Value,
    #[schema(value_type = Object, required = false)]
    error: Value,
    /// The last attempt's failure while a retry waits.
    #[schema(value_type = Object, required = false)]
    last_error: Value,
    #[schema(required = false)]
    call_id: String,
    #[schema(required = false)]
    logs: String,
    #[schema(required = false)]
    usage: CallUsage,
    /// Where the job's end is POSTed, and how that went.
    #[schema(value_type = Object, required = false)]
    callback: Value,
}

#[derive(ToSchema)]
pub struct JobList {
    jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; null at the end.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct Schedule {
    schedule_id: String,
    cron: String,
    #[schema(rename = "fn")]
    function: String,
    #[schema(value_type = Object)]
    kwargs: Value,
    version: Option<String>,
    paused: bool,
    next_at: Option<String>,
    last_at: Option<String>,
    last_job_id: Option<String>,
    created_at: String,
}

#[derive(ToSchema)]
pub struct ScheduleList {
    schedules: Vec<Schedule>,
}

#[derive(ToSchema)]
pub struct ScheduleRemoved {
    removed: String,
}

#[derive(ToSchema)]
pub struct Health {
    ok: bool,
    /// `ok`, or `unreachable` (then the status is 503).
    store: String,
    node: String,
}

/// A webhook delivery's answer: the event, and whether a deploy started.
#[derive(ToSchema)]
pub struct HookAnswer {
    ok: bool,
    event: String,
    #[schema(required = false)]
    deploying: bool,
}

/// The failures every operator operation can answer.
#[derive(utoipa::IntoResponses)]
pub enum OperatorErrors {
    #[response(
        status = 400,
        description = "A malformed body, parameter or name (detail names it)"
    )]
    BadRequest(Error),
    #[response(
        status = 401,
        description = "unauthorized, token_expired or token_revoked"
    )]
    Unauthorized(Error),
    #[response(status = 403, description = "Not an operator token")]
    Forbidden(Error),
    #[response(status = 404, description = "No such tenant, or nothing of that name")]
    NotFound(Error),
    #[response(
        status = 429,
        description = "Too many failed authentications from this address"
    )]
    TooManyFailures(Error),
}

/// The failures every tenant operation can answer.
#[derive(utoipa::IntoResponses)]
pub enum TenantErrors {
    #[response(
        status = 401,
        description = "unauthorized, token_expired or token_revoked"
    )]
    Unauthorized(Error),
    #[response(
        status = 403,
        description = "The token lacks the scope this operation needs"
    )]
    Forbidden(Error),
    #[response(
        status = 429,
        description = "Too many failed authentications from this address"
    )]
    TooManyFailures(Error),
    #[response(
        status = 503,
        description = "The store is unreachable or busy (Retry-After)"
    )]
    Unavailable(Error),
}

#[derive(ToSchema)]
pub struct SessionInfo {
    /// The operator token the session was opened with.
    operator_token_id: String,
    /// To be sent as `X-CSRF-Token` with every change made in the session.
    csrf_token: String,
    expires_at: String,
}

/// A recorded call as listed: `GET /admin/v1/calls/{call_id}`'s view without the logs.
#[derive(ToSchema)]
pub struct CallSummary {
    call_id: String,
    tenant: String,
    #[schema(rename = "fn")]
    function: String,
    version: Option<String>,
    /// `succeeded` or `failed`.
    status: String,
    /// `{code, message}` of a failed call.
    #[schema(value_type = Option<Object>)]
    error: Option<String>,
    #[schema(value_type = Object)]
    usage: String,
    at: String,
}

#[derive(ToSchema)]
pub struct CallList {
    calls: Vec<CallSummary>,
    /// Pass as `cursor` for the next page; null at the end.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
pub struct DayStats {
    /// The UTC day, `2026-12-01`.
    day: String,
    calls: i64,
    errors: i64,
    cpu_ms: i64,
    p50_ms: i64,
    p99_ms: i64,
}

#[derive(ToSchema)]
pub struct TenantStats {
    tenant: String,
    calls: i64,
    errors: i64,
    /// CPU used in the range asked for, deploy-time children included.
    cpu_ms: i64,
    /// CPU used this calendar month (UTC), what the quota counts.
    month_cpu_ms: i64,
    /// The plan's `cpu_seconds_per_month` in ms, after overrides; null: no quota.
    cpu_quota_ms: Option<i64>,
}

#[derive(ToSchema)]
pub struct CodeCount {
    code: String,
    count: i64,
}

#[derive(ToSchema)]
pub struct Stats {
    from: String,
    to: String,
    days: Vec<DayStats>,
    tenants: Vec<TenantStats>,
    codes: Vec<CodeCount>,
}
