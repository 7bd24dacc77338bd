"""The client against the real daemon: calls, errors, retries, jobs, uploads, listings, and
the asyncio client."""

import asyncio
import threading
import time

import pytest

import falra
from falra import AsyncClient, Client


def test_a_call_returns_its_result_with_url_and_token_from_the_environment(daemon, monkeypatch):
    monkeypatch.setenv("FALRA_URL", daemon.url.replace("http://", ""))
    monkeypatch.setenv("FALRA_TOKEN", daemon.token("call"))
    with Client() as client:
        assert client.call("utils.add", a=1, b=2) == 3
        answer = client.call_with("utils.shout", {"s": "hi"})
        assert answer.result == "HI"
        assert "shouting hi" in answer.logs
        assert answer.call_id.startswith("c_")
        assert answer.usage["wall_ms"] >= 0
        version = client.versions()[0]["id"]
        assert client.call_with("utils.add", {"a": 2, "b": 2}, version=version).version == version
        names = [f["name"] for f in client.functions()["functions"]]
        assert "utils.add" in names


def test_every_failure_is_its_code_s_exception(daemon):
    client = Client(daemon.url, daemon.token("call"))
    with pytest.raises(falra.FunctionError) as e:
        client.call("utils.div", a=1, b=0)
    assert (e.value.code, e.value.status) == ("function_error", 422)
    assert e.value.detail["type"] == "ZeroDivisionError"
    assert e.value.call_id.startswith("c_")
    with pytest.raises(falra.FnNotFound) as e:
        client.call("utils.nope")
    assert e.value.status == 404 and e.value.detail["function"] == "nope"
    with pytest.raises(falra.Timeout):
        client.call_with("utils.slow", {"s": 5}, timeout_ms=300)
    with pytest.raises(falra.Unauthorized) as e:
        Client(daemon.url, "flr_" + "0" * 40).call("utils.add", a=1, b=2)
    assert e.value.status == 401
    with pytest.raises(falra.Forbidden):
        Client(daemon.url, daemon.token("jobs")).call("utils.add", a=1, b=2)
    with pytest.raises(TypeError):
        client.call_with("utils.add", {"token": "x"})
    with pytest.raises(falra.ConnectionFailed) as e:
        Client("http://127.0.0.1:9", "x", retries=0).call("utils.add", a=1, b=2)
    assert e.value.code == "connection"
    assert isinstance(e.value, falra.FalraError)


def test_a_refusal_that_ran_nothing_is_retried_after_its_retry_after(daemon):
    daemon.policy(max_concurrency=1)
    try:
        token = daemon.token("call")
        busy = threading.Thread(target=lambda: Client(daemon.url, token).call("utils.slow", s=1.5))
        busy.start()
        time.sleep(0.5)
        with pytest.raises(falra.ConcurrencyLimited) as e:
            Client(daemon.url, token, retries=0).call("utils.add", a=1, b=2)
        assert e.value.status == 429 and e.value.retry_after is not None
        started = time.monotonic()
        assert Client(daemon.url, token, retries=5).call("utils.add", a=1, b=2) == 3
        assert time.monotonic() - started >= 0.5
        busy.join()
    finally:
        daemon.policy(max_concurrency=8)


def test_jobs_are_submitted_waited_for_with_progress_cancelled_and_listed(daemon):
    client = Client(daemon.url, daemon.token("jobs"))
    job = client.submit("utils.steps", n=3)
    assert job.status == "queued" and job.job_id.startswith("j_")
    seen = []
    done = client.wait(job.job_id, progress=seen.append, poll=0.1, timeout=60)
    assert done.status == "succeeded" and done.result() == 3
    assert seen and seen[-1]["fraction"] <= 1.0
    failing = client.wait(client.submit("utils.div", a=1, b=0).job_id, timeout=60)
    with pytest.raises(falra.FunctionError):
        failing.result()
    slow = client.submit("utils.slow", s=30, idempotency_key="slow-1")
    assert client.submit("utils.slow", s=30, idempotency_key="slow-1").job_id == slow.job_id
    cancelled = client.cancel(slow.job_id)
    assert client.wait(cancelled.job_id, timeout=30).status == "cancelled"
    with pytest.raises(falra.Cancelled):
        client.job(slow.job_id).result()
    ids = [j.job_id for j in client.jobs(page_size=1)]
    assert {job.job_id, slow.job_id} <= set(ids)
    with pytest.raises(falra.NotFound):
        client.job("j_0000000000000000")


def test_modules_are_uploaded_listed_and_removed(daemon):
    client = Client(daemon.url, daemon.token("deploy", "call"))
    made = client.upload("tools.helpers", "def twice(x):\n    return 2 * x\n")
    assert [f["name"] for f in made["functions"]] == ["tools.helpers.twice"]
    assert client.call("tools.helpers.twice", x=21) == 42
    assert [m["module"] for m in client.modules()] == ["tools.helpers"]
    with pytest.raises(falra.BadRequest) as e:
        client.upload("tools.broken", "def (:\n")
    assert e.value.detail.get("line") == 1
    client.remove_upload("tools.helpers")
    assert client.modules() == []
    with pytest.raises(falra.FnNotFound):
        client.call("tools.helpers.twice", x=1)


def test_the_asyncio_client_does_the_same(daemon):
    async def main():
        async with AsyncClient(daemon.url, daemon.token("call", "jobs")) as client:
            results = await asyncio.gather(*(client.call("utils.add", a=i, b=1) for i in range(4)))
            assert results == [1, 2, 3, 4]
            with pytest.raises(falra.FunctionError):
                await client.call("utils.div", a=1, b=0)
            job = await client.submit("utils.add", a=2, b=3)
            assert (await client.wait(job.job_id, poll=0.1, timeout=60)).result() == 5
            assert job.job_id in [j.job_id async for j in client.jobs()]

    asyncio.run(main())
