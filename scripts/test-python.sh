#!/usr/bin/env bash
# The Python environment the end-to-end tests drive real services with: an S3-compatible
# server (moto_server), pandas for the ETL reference, boto3 to read objects back. Made once in
# target/test-venv (from PyPI), reused while it still imports. Prints its python's path.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/test-venv
if ! "$venv/bin/python" -c "import moto, pandas, boto3, flask" >/dev/null 2>&1; then
  echo "making $venv (moto[server], pandas, boto3)" >&2
  rm -rf "$venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]>=5' 'pandas>=2' boto3 >&2
fi
echo "$(pwd)/$venv/bin/python"
