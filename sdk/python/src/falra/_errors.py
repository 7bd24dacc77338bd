"""Every failure the daemon answers, as one exception class per error code (docs/api.md#errors)."""

from __future__ import annotations

from typing import Any, Dict, Optional, Type


class FalraError(Exception):
    """A failure answered by the daemon (or no answer at all: `code` is then "connection")."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: Optional[int] = None,
        detail: Optional[Dict[str, Any]] = None,
        call_id: Optional[str] = None,
        retry_after: Optional[float] = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.detail: Dict[str, Any] = detail or {}
        self.call_id = call_id
        self.retry_after = retry_after


class ConnectionFailed(FalraError):
    """The daemon could not be reached, or did not answer in time."""


class BadRequest(FalraError): ...
class Unauthorized(FalraError): ...
class TokenExpired(FalraError): ...
class TokenRevoked(FalraError): ...
class Forbidden(FalraError): ...
class FnNotFound(FalraError): ...
class NotFound(FalraError): ...
class MethodNotAllowed(FalraError): ...
class NotDeployed(FalraError): ...
class Conflict(FalraError): ...
class RequestTimeout(FalraError): ...
class PayloadTooLarge(FalraError): ...
class FunctionError(FalraError): ...
class ResultNotSerializable(FalraError): ...
class ResultTooLarge(FalraError): ...
class MemoryLimitExceeded(FalraError): ...
class ProcessExited(FalraError): ...
class RateLimited(FalraError): ...
class ConcurrencyLimited(FalraError): ...
class QuotaExceeded(FalraError): ...
class Overloaded(FalraError): ...
class ShuttingDown(FalraError): ...
class SyncFailed(FalraError): ...
class Timeout(FalraError): ...
class Cancelled(FalraError): ...
class Internal(FalraError): ...


BY_CODE: Dict[str, Type[FalraError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "token_expired": TokenExpired,
    "token_revoked": TokenRevoked,
    "forbidden": Forbidden,
    "fn_not_found": FnNotFound,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "not_deployed": NotDeployed,
    "conflict": Conflict,
    "request_timeout": RequestTimeout,
    "payload_too_large": PayloadTooLarge,
    "function_error": FunctionError,
    "result_not_serializable": ResultNotSerializable,
    "result_too_large": ResultTooLarge,
    "memory_limit_exceeded": MemoryLimitExceeded,
    "process_exited": ProcessExited,
    "rate_limited": RateLimited,
    "concurrency_limited": ConcurrencyLimited,
    "quota_exceeded": QuotaExceeded,
    "overloaded": Overloaded,
    "shutting_down": ShuttingDown,
    "sync_failed": SyncFailed,
    "timeout": Timeout,
    "cancelled": Cancelled,
    "internal": Internal,
}


def error_from(
    status: Optional[int],
    error: Dict[str, Any],
    call_id: Optional[str] = None,
    retry_after: Optional[float] = None,
) -> FalraError:
    """The exception for one `{"code", "message", "detail"}` error object."""
    code = str(error.get("code") or "internal")
    cls = BY_CODE.get(code, FalraError)
    detail = error.get("detail")
    return cls(
        code,
        str(error.get("message") or code),
        status=status,
        detail=detail if isinstance(detail, dict) else None,
        call_id=call_id,
        retry_after=retry_after,
    )
