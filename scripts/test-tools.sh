#!/usr/bin/env bash
# The test servers and tools that are not Python packages, installed into target/tools once and
# reused: two S3-compatible servers independent of moto for the ETL tests (s3s-fs from
# crates.io, s3rver from npm, both pinned), Node.js from apt where it is missing, and cargo-fuzz
# for the archive reader's fuzz target (run on the nightly toolchain); Chromium and the
# console tests' npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(pwd)/target/tools
mkdir -p "$tools"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "installing nodejs and npm" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq nodejs npm >/dev/null
fi

if [[ ! -x "$tools/bin/s3s-fs" ]]; then
  echo "building s3s-fs into $tools" >&2
  cargo install -q --locked --root "$tools" s3s-fs@0.14.1 --features binary
fi

if [[ ! -f "$tools/node/node_modules/s3rver/bin/s3rver.js" ]]; then
  echo "installing s3rver into $tools/node" >&2
  mkdir -p "$tools/node"
  (cd "$tools/node" && npm install -s --no-audit --no-fund --no-save s3rver@3.7.1 >/dev/null)
fi

# The zip reader's fuzz target needs the nightly toolchain (sanitizer flags) and cargo-fuzz.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain (minimal)" >&2
  rustup toolchain install nightly --profile minimal >&2
fi
if [[ ! -x "$tools/bin/cargo-fuzz" ]]; then
  echo "building cargo-fuzz into $tools" >&2
  cargo install -q --locked --root "$tools" cargo-fuzz@0.13.2
fi

# The console's browser tests: Debian's Chromium, driven by Playwright (playwright-core, no
# browser download) with axe-core, both pinned by tests/console/package-lock.json.
if ! [[ -x /usr/bin/chromium ]]; then
  echo "installing chromium" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
if [[ ! -f tests/console/node_modules/playwright-core/package.json ]]; then
  echo "installing the console tests' packages" >&2
  (cd tests/console && npm ci -s --no-audit --no-fund >/dev/null)
fi
