#!/usr/bin/env bash
# The Python environment the end-to-end tests drive real services with: an S3-compatible
# server (moto_server), pandas for the ETL reference, boto3 to read objects back, and
# schemathesis to fuzz the API from its OpenAPI document and openapi-spec-validator to check it; numpy's wheel; pytest, httpx and
# build for the Python client (sdk/python). Made once in target/test-venv (from
# PyPI), reused while it still imports. Prints its python's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/test-venv
if ! "$venv/bin/python" -c "import moto, pandas, boto3, flask" >/dev/null 2>&1; then
  echo "making $venv (moto[server], pandas, boto3)" >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5' 'pandas>=2' boto3 >&2
fi
# The Python client's build and test tools, and its one dependency.
if ! "$venv/bin/python" -c "import pytest, httpx, build" >/dev/null 2>&1; then
  echo "adding pytest, httpx and build to $venv" >&2
  "$venv/bin/pip" install -q --disable-pip-version-check 'pytest>=7' 'httpx>=0.25,<1' 'build>=1' >&2
fi
# schemathesis beside it, in an environment of its own (its pins and moto's need not agree).
fuzz=target/fuzz-venv
if ! "$fuzz/bin/schemathesis" --version >/dev/null 2>&1 || [[ ! -x "$fuzz/bin/openapi-spec-validator" ]]; then
  echo "making $fuzz (schemathesis, openapi-spec-validator)" >&2
  rm -rf "$fuzz"
  /usr/bin/python3 -m venv "$fuzz"
  "$fuzz/bin/pip" install -q --disable-pip-version-check 'schemathesis==4.32.*' \
    'openapi-spec-validator==0.7.*' >&2
fi
# numpy's wheel, for the test that preloads it (served to the daemon's builds from loopback).
wheels=target/test-wheels
if ! compgen -G "$wheels/numpy-*.whl" >/dev/null; then
  echo "downloading numpy's wheel into $wheels" >&2
  mkdir -p "$wheels"
  /usr/bin/python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
    --no-deps -d "$wheels" 'numpy<3' >&2
fi
echo "$(pwd)/$venv/bin/python"
