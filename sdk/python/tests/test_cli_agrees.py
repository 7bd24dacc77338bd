"""`falra call` and the client agree: the same environment variables (FALRA_URL without a
scheme, FALRA_TOKEN), the same arguments (JSON values, a pinned version, `fn`/`token` refused),
the same answers and the same error codes."""

import json
import os
import subprocess

import pytest

import falra
from falra import Client


def cli(*args, env):
    return subprocess.run(
        [os.environ["FALRA_BIN"], "call", "--json", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, RUST_BACKTRACE="0", **env),
        timeout=60,
    )


def test_the_cli_and_the_client_read_the_same_environment_and_answer_alike(daemon, monkeypatch):
    env = {"FALRA_URL": daemon.url.replace("http://", ""), "FALRA_TOKEN": daemon.token("call")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = Client()
    version = client.versions()[0]["id"]
    # JSON values on the command line are what keyword arguments are in Python.
    done = cli("utils.add", "a=[1]", "b=[2, 3]", "--version", version, env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    sdk = client.call_with("utils.add", {"a": [1], "b": [2, 3]}, version=version)
    assert answer["result"] == sdk.result == [1, 2, 3]
    assert answer["version"] == sdk.version == version
    # A value that is not JSON is a string on both sides.
    done = cli("utils.shout", "s=hi there", env=env)
    assert json.loads(done.stdout)["result"] == client.call("utils.shout", s="hi there") == "HI THERE"


@pytest.mark.parametrize(
    "args, kwargs, exception",
    [
        (["utils.div", "a=1", "b=0"], {"a": 1, "b": 0}, falra.FunctionError),
        (["utils.nope"], {}, falra.FnNotFound),
        (["utils.add", "a=1", "b=2", "--version", "v_nope"], {"a": 1, "b": 2}, falra.FalraError),
    ],
)
def test_a_failure_has_the_same_code_on_both_sides(daemon, args, kwargs, exception):
    token = daemon.token("call")
    done = cli(*args, env={"FALRA_URL": daemon.url, "FALRA_TOKEN": token})
    assert done.returncode != 0
    body = json.loads(done.stderr[done.stderr.index("{"):done.stderr.rindex("}") + 1])
    version = args[args.index("--version") + 1] if "--version" in args else None
    with pytest.raises(exception) as e:
        Client(daemon.url, token).call_with(args[0], kwargs, version=version)
    assert body["error"]["code"] == e.value.code


def test_reserved_names_and_bad_urls_are_refused_before_any_request(daemon):
    env = {"FALRA_URL": daemon.url, "FALRA_TOKEN": daemon.token("call")}
    done = cli("utils.add", "token=x", env=env)
    assert done.returncode != 0 and "'fn' and 'token' cannot be keyword arguments" in done.stderr
    with pytest.raises(TypeError, match="'fn' and 'token' cannot be keyword arguments"):
        Client(daemon.url, env["FALRA_TOKEN"]).call_with("utils.add", {"token": "x"})
    done = cli("utils.add", "a=1", "b=2", env=dict(env, FALRA_URL="ftp://nowhere"))
    assert done.returncode != 0 and "http:// or https://" in done.stderr
