//! The error codes a client can see: the stable vocabulary of DESIGN.md's error table.
//!
//! Services name the code of each of their errors' kinds; how a code travels (an HTTP status,
//! a job's recorded outcome) is decided by the layer that carries it.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    TokenExpired,
    TokenRevoked,
    Forbidden,
    NotFound,
    FnNotFound,
    MethodNotAllowed,
    NotDeployed,
    Conflict,
    PayloadTooLarge,
    RequestTimeout,
    FunctionError,
    ResultNotSerializable,
    ResultTooLarge,
    MemoryLimitExceeded,
    ProcessExited,
    SyncFailed,
    RateLimited,
    ConcurrencyLimited,
    QuotaExceeded,
    Overloaded,
    ShuttingDown,
    Timeout,
    Internal,
}

impl ErrorCode {
    /// Every code, for tables that must cover them all.
    pub const ALL: [ErrorCode; 25] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::TokenRevoked,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::FnNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NotDeployed,
        ErrorCode::Conflict,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::FunctionError,
        ErrorCode::ResultNotSerializable,
        ErrorCode::ResultTooLarge,
        ErrorCode::MemoryLimitExceeded,
        ErrorCode::ProcessExited,
        ErrorCode::SyncFailed,
        ErrorCode::RateLimited,
        ErrorCode::ConcurrencyLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::Overloaded,
        ErrorCode::ShuttingDown,
        ErrorCode::Timeout,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TokenRevoked => "token_revoked",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::FnNotFound => "fn_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::NotDeployed => "not_deployed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::FunctionError => "function_error",
            ErrorCode::ResultNotSerializable => "result_not_serializable",
            ErrorCode::ResultTooLarge => "result_too_large",
            ErrorCode::MemoryLimitExceeded => "memory_limit_exceeded",
            ErrorCode::ProcessExited => "process_exited",
            ErrorCode::SyncFailed => "sync_failed",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ConcurrencyLimited => "concurrency_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}
