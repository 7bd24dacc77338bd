"""The clients: `Client` (blocking) and `AsyncClient` (asyncio), one request model for both.

Each method builds a `_Request`; the two clients only differ in how they send it and how they
wait between retries. Retries are for answers that say nothing ran — `429 rate_limited`,
`429 concurrency_limited`, `503 overloaded`, `503 shutting_down` — after the answer's
`Retry-After` (or an exponential backoff), never for a job submitted without an idempotency key
(a retried submit could make a second job), and never for `quota_exceeded` (its `Retry-After`
is the month's end).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, AsyncIterator

import httpx

from ._errors import ConnectionFailed, FalraError, error_from

DEFAULT_URL = "http://127.0.0.1:8700"
RETRYABLE = frozenset({"rate_limited", "concurrency_limited", "overloaded", "shutting_down"})
ENDED = frozenset({"succeeded", "failed", "cancelled"})


@dataclasses.dataclass
class Answer:
    """A call's whole answer: its result and what the call was."""

    result: Any
    call_id: Optional[str]
    version: Optional[str]
    logs: str
    usage: Dict[str, Any]


@dataclasses.dataclass
class Job:
    """A background job as the daemon last described it (`GET /v1/jobs/{id}`)."""

    job_id: str
    status: str
    fn: str
    raw: Dict[str, Any]

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def progress(self) -> Optional[Dict[str, Any]]:
        return self.raw.get("progress")

    def result(self) -> Any:
        """The job's result once it succeeded; its error as an exception once it failed or was
        cancelled; `RuntimeError` while it has not ended."""
        if not self.ended:
            raise RuntimeError(f"job {self.job_id} is {self.status}")
        if self.raw.get("ok"):
            return self.raw.get("result")
        raise error_from(None, self.raw.get("error") or {}, self.raw.get("call_id"))


def _job(body: Mapping[str, Any]) -> Job:
    return Job(str(body["job_id"]), str(body["status"]), str(body.get("fn", "")), dict(body))


@dataclasses.dataclass
class _Request:
    method: str
    path: str
    params: Dict[str, Any] = dataclasses.field(default_factory=dict)
    json: Any = None
    content: Optional[bytes] = None
    headers: Dict[str, str] = dataclasses.field(default_factory=dict)
    retry: bool = True


def _url(url: Optional[str]) -> str:
    url = (url or os.environ.get("FALRA_URL") or DEFAULT_URL).rstrip("/")
    # `localhost:8700`, as `falra --url` takes it.
    return url if "://" in url else "http://" + url


def _retry_after(response: httpx.Response) -> Optional[float]:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse(response: httpx.Response) -> Any:
    """The answer's JSON, or the exception its error object names."""
    try:
        body = response.json()
    except ValueError:
        body = None
    # A job that failed is a success of `GET /v1/jobs/{id}` (its error is in the job).
    if response.is_success:
        return body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        raise error_from(
            response.status_code, body["error"], body.get("call_id"), _retry_after(response)
        )
    raise FalraError(
        "internal",
        f"HTTP {response.status_code} without an error object",
        status=response.status_code,
    )


def _call_body(fn: str, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    if "fn" in kwargs or "token" in kwargs:
        raise TypeError("'fn' and 'token' cannot be keyword arguments of a call")
    body: Dict[str, Any] = {"fn": fn}
    body.update(kwargs)
    return body


def _answer(body: Mapping[str, Any]) -> Answer:
    return Answer(
        body.get("result"),
        body.get("call_id"),
        body.get("version"),
        body.get("logs") or "",
        body.get("usage") or {},
    )


@dataclasses.dataclass
class _Wait:
    seconds: float


class _Base:
    def __init__(
        self,
        url: Optional[str],
        token: Optional[str],
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        self.url = _url(url)
        self.token = token if token is not None else os.environ.get("FALRA_TOKEN")
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff

    def _headers(self, request: _Request) -> Dict[str, str]:
        headers = dict(request.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def _send_args(self, request: _Request) -> Dict[str, Any]:
        return {
            "method": request.method,
            "url": self.url + request.path,
            "params": request.params,
            "json": request.json,
            "content": request.content,
            "headers": self._headers(request),
        }

    def _outcome(self, request: _Request, response: httpx.Response, attempt: int) -> Any:
        """The answer's body; or, for a refusal to retry, `_Wait`; or the error, raised."""
        try:
            return _parse(response)
        except FalraError as e:
            wait = self._delay(attempt, e) if request.retry else None
            if wait is None:
                raise
            return _Wait(wait)

    @staticmethod
    def _jobs_params(status: Optional[str], page_size: int, cursor: Optional[str]) -> Dict[str, Any]:
        params: Dict[str, Any] = {"limit": page_size}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return params

    @staticmethod
    def _waited(
        job: Job,
        progress: Optional[Callable[[Dict[str, Any]], None]],
        seen: Optional[Dict[str, Any]],
        deadline: Optional[float],
    ) -> Optional[Dict[str, Any]]:
        """Reports new progress and returns what was last seen; `TimeoutError` past `deadline`."""
        if progress is not None and job.progress is not None and job.progress != seen:
            seen = job.progress
            progress(seen)
        if not job.ended and deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"job {job.job_id} is still {job.status}")
        return seen

    def _delay(self, attempt: int, error: FalraError) -> Optional[float]:
        """How long to wait before attempt `attempt + 1`, or `None`: give up with `error`."""
        if attempt >= self.retries or error.code not in RETRYABLE:
            return None
        wait = error.retry_after
        if wait is None:
            wait = self.backoff * (2**attempt)
        return min(wait, self.max_backoff)

    # Each method's request, shared by both clients.
    @staticmethod
    def _call_request(
        fn: str, kwargs: Mapping[str, Any], version: Optional[str], timeout_ms: Optional[int]
    ) -> _Request:
        params: Dict[str, Any] = {}
        if version is not None:
            params["version"] = version
        if timeout_ms is not None:
            params["timeout_ms"] = timeout_ms
        return _Request("POST", "/v1/call", params, _call_body(fn, kwargs))

    @staticmethod
    def _submit_request(
        fn: str,
        kwargs: Mapping[str, Any],
        version: Optional[str],
        max_attempts: Optional[int],
        idempotency_key: Optional[str],
    ) -> _Request:
        params: Dict[str, Any] = {}
        if version is not None:
            params["version"] = version
        if max_attempts is not None:
            params["max_attempts"] = max_attempts
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        # Without a key a retried submit could make a second job: no retry then.
        return _Request(
            "POST", "/v1/jobs", params, _call_body(fn, kwargs), None, headers, bool(idempotency_key)
        )


class Client(_Base):
    """A blocking client. `url` defaults to `FALRA_URL` (else http://127.0.0.1:8700), `token`
    to `FALRA_TOKEN`; `timeout` is each HTTP request's, in seconds; `retries` how many times a
    refusal that ran nothing (429/503) is retried, after its `Retry-After`."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http: Optional[httpx.Client] = None,
    ) -> None:
        super().__init__(url, token, retries, backoff, max_backoff)
        self._http = http or httpx.Client(timeout=timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: _Request) -> Any:
        for attempt in itertools.count():
            try:
                response = self._http.request(**self._send_args(request))
            except httpx.HTTPError as e:
                raise ConnectionFailed("connection", f"{type(e).__name__}: {e}") from e
            outcome = self._outcome(request, response, attempt)
            if not isinstance(outcome, _Wait):
                return outcome
            time.sleep(outcome.seconds)

    def call(self, fn: str, /, **kwargs: Any) -> Any:
        """Calls `fn` ("module.function") with keyword arguments; returns its result."""
        return self.call_with(fn, kwargs).result

    def call_with(
        self,
        fn: str,
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        version: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Answer:
        """Calls `fn` with `kwargs`, pinned to `version` and within `timeout_ms` if given;
        returns the whole answer (result, call id, version, logs, usage)."""
        return _answer(self._send(self._call_request(fn, kwargs or {}, version, timeout_ms)))

    def submit(
        self,
        fn: str,
        /,
        *,
        version: Optional[str] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        **kwargs: Any,
    ) -> Job:
        """Submits `fn(**kwargs)` as a background job (a token with the `jobs` scope)."""
        return _job(self._send(self._submit_request(fn, kwargs, version, max_attempts, idempotency_key)))

    def job(self, job_id: str) -> Job:
        return _job(self._send(_Request("GET", f"/v1/jobs/{job_id}")))

    def wait(
        self,
        job_id: str,
        *,
        progress: Optional[Callable[[Dict[str, Any]], None]] = None,
        poll: float = 0.5,
        timeout: Optional[float] = None,
    ) -> Job:
        """Waits until the job has ended and returns it (`Job.result()` gives its result);
        `progress` is called with each new progress record. `TimeoutError` after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            job = self.job(job_id)
            seen = self._waited(job, progress, seen, deadline)
            if job.ended:
                return job
            time.sleep(poll)

    def cancel(self, job_id: str) -> Job:
        return _job(self._send(_Request("DELETE", f"/v1/jobs/{job_id}")))

    def jobs(self, *, status: Optional[str] = None, page_size: int = 50) -> Iterator[Job]:
        """The tenant's jobs, newest first, every page."""
        cursor = None
        while True:
            body = self._send(_Request("GET", "/v1/jobs", self._jobs_params(status, page_size, cursor)))
            for job in body.get("jobs", []):
                yield _job(job)
            cursor = body.get("next_cursor")
            if not cursor:
                return

    def functions(self, *, version: Optional[str] = None) -> Dict[str, Any]:
        params = {"version": version} if version else {}
        return self._send(_Request("GET", "/v1/functions", params))

    def versions(self) -> List[Dict[str, Any]]:
        return list(self._send(_Request("GET", "/v1/versions")).get("versions", []))

    def upload(self, module: str, source: str) -> Dict[str, Any]:
        """Uploads `source` as the private module `module` (a token with the `deploy` scope);
        answers the new version and the module's functions."""
        return self._send(_Request("PUT", f"/v1/modules/{module}", content=source.encode()))

    def remove_upload(self, module: str) -> Dict[str, Any]:
        return self._send(_Request("DELETE", f"/v1/modules/{module}"))

    def modules(self) -> List[Dict[str, Any]]:
        return list(self._send(_Request("GET", "/v1/modules")).get("modules", []))


class AsyncClient(_Base):
    """The asyncio client: the same methods as `Client`, awaited."""

    def __init__(
        self,
        url: Optional[str] = None,
        token: Optional[str] = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        http: Optional[httpx.AsyncClient] = None,
    ) -> None:
        super().__init__(url, token, retries, backoff, max_backoff)
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: _Request) -> Any:
        for attempt in itertools.count():
            try:
                response = await self._http.request(**self._send_args(request))
            except httpx.HTTPError as e:
                raise ConnectionFailed("connection", f"{type(e).__name__}: {e}") from e
            outcome = self._outcome(request, response, attempt)
            if not isinstance(outcome, _Wait):
                return outcome
            await asyncio.sleep(outcome.seconds)

    async def call(self, fn: str, /, **kwargs: Any) -> Any:
        return (await self.call_with(fn, kwargs)).result

    async def call_with(
        self,
        fn: str,
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        version: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Answer:
        return _answer(await self._send(self._call_request(fn, kwargs or {}, version, timeout_ms)))

    async def submit(
        self,
        fn: str,
        /,
        *,
        version: Optional[str] = None,
        max_attempts: Optional[int] = None,
        idempotency_key: Optional[str] = None,
        **kwargs: Any,
    ) -> Job:
        return _job(
            await self._send(self._submit_request(fn, kwargs, version, max_attempts, idempotency_key))
        )

    async def job(self, job_id: str) -> Job:
        return _job(await self._send(_Request("GET", f"/v1/jobs/{job_id}")))

    async def wait(
        self,
        job_id: str,
        *,
        progress: Optional[Callable[[Dict[str, Any]], None]] = None,
        poll: float = 0.5,
        timeout: Optional[float] = None,
    ) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = None
        while True:
            job = await self.job(job_id)
            seen = self._waited(job, progress, seen, deadline)
            if job.ended:
                return job
            await asyncio.sleep(poll)

    async def cancel(self, job_id: str) -> Job:
        return _job(await self._send(_Request("DELETE", f"/v1/jobs/{job_id}")))

    async def jobs(self, *, status: Optional[str] = None, page_size: int = 50) -> AsyncIterator[Job]:
        cursor = None
        while True:
            params = self._jobs_params(status, page_size, cursor)
            body = await self._send(_Request("GET", "/v1/jobs", params))
            for job in body.get("jobs", []):
                yield _job(job)
            cursor = body.get("next_cursor")
            if not cursor:
                return

    async def functions(self, *, version: Optional[str] = None) -> Dict[str, Any]:
        params = {"version": version} if version else {}
        return await self._send(_Request("GET", "/v1/functions", params))

    async def versions(self) -> List[Dict[str, Any]]:
        return list((await self._send(_Request("GET", "/v1/versions"))).get("versions", []))

    async def upload(self, module: str, source: str) -> Dict[str, Any]:
        return await self._send(_Request("PUT", f"/v1/modules/{module}", content=source.encode()))

    async def remove_upload(self, module: str) -> Dict[str, Any]:
        return await self._send(_Request("DELETE", f"/v1/modules/{module}"))

    async def modules(self) -> List[Dict[str, Any]]:
        return list((await self._send(_Request("GET", "/v1/modules"))).get("modules", []))
