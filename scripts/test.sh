#!/usr/bin/env bash
# Every check and test, from a fresh checkout: installs what is missing, then formatting, lints,
# the layers' direction, unit tests and the end-to-end suite against the real `falra` binary
# (release build, shared by the tests and the benchmarks), with a throwaway PostgreSQL cluster
# started for them and stopped after.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
bash scripts/install-uv.sh
FALRA_TEST_PYTHON=$(bash scripts/test-python.sh)
export FALRA_TEST_PYTHON
bash scripts/test-tools.sh

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --release --workspace --all-targets -- -D warnings

echo "== layers"
bash scripts/check-layers.sh

echo "== build"
cargo build --release -p falra

echo "== tests (beside a throwaway PostgreSQL cluster: the store's tests run on both backends)"
bash scripts/with-postgres.sh cargo test --release --workspace

echo "== the zip reader under cargo fuzz (bounded: FUZZ_SECONDS, default 60)"
bash scripts/fuzz.sh

echo "== the Python client (sdk/python): its sdist and wheel built, the wheel installed, its tests against the real daemon"
rm -rf target/sdk-dist
"$FALRA_TEST_PYTHON" -m build -q --outdir target/sdk-dist sdk/python
"$FALRA_TEST_PYTHON" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
  target/sdk-dist/falra-*.whl
FALRA_BIN=$(pwd)/target/release/falra "$FALRA_TEST_PYTHON" -m pytest -q -p no:cacheprovider sdk/python/tests
