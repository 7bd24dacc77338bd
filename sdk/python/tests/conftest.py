"""A real daemon for the tests: the release `falra` binary (FALRA_BIN), a fresh data directory,
one tenant whose code is a real git repository, and tokens of each scope."""

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

CODE = '''
import time
import falra

def add(a, b):
    return a + b

def div(a, b):
    return a / b

def shout(s):
    print("shouting", s)
    return s.upper()

def slow(s):
    time.sleep(s)
    return s

def steps(n):
    for i in range(n):
        falra.progress((i + 1) / n, "step %d" % (i + 1))
        time.sleep(0.3)
    return n
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _admin(url, token, method, path, body=None):
    req = urllib.request.Request(
        url + "/admin/v1" + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


class Daemon:
    def __init__(self, url, admin):
        self.url, self.admin = url, admin

    def token(self, *scopes):
        body = _admin(self.url, self.admin, "POST", "/tenants/caro/tokens", {"scopes": list(scopes)})
        return body["token"]

    def policy(self, **fields):
        return _admin(self.url, self.admin, "PUT", "/tenants/caro/policy", fields)


@pytest.fixture(scope="session")
def daemon():
    binary = os.environ["FALRA_BIN"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = os.path.join(tmp, "repo")
        os.mkdir(repo)
        with open(os.path.join(repo, "utils.py"), "w") as f:
            f.write(CODE)
        git = ["git", "-C", repo, "-c", "user.name=t", "-c", "user.email=t@localhost"]
        subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
        subprocess.run(git + ["add", "-A"], check=True)
        subprocess.run(git + ["commit", "-qm", "code"], check=True)
        data = os.path.join(tmp, "data")
        # No FALRA_* variable of the developer's configures the test daemon.
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FALRA_")}
        admin = subprocess.run(
            [binary, "admin", "init", "--data-dir", data],
            check=True,
            capture_output=True,
            text=True,
            env=clean,
        ).stdout.strip()
        port = _free_port()
        log = open(os.path.join(tmp, "daemon.log"), "w")
        proc = subprocess.Popen(
            [binary, "serve", "--data-dir", data, "--listen", "127.0.0.1:%d" % port],
            stderr=log,
            env=dict(clean, FALRA_LOG="warn"),
        )
        url = "http://127.0.0.1:%d" % port
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.05)
            _admin(url, admin, "POST", "/tenants", {"name": "caro", "repo": "file://" + repo})
            _admin(url, admin, "POST", "/tenants/caro/sync")
            yield Daemon(url, admin)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
