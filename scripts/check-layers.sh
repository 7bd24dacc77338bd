#!/usr/bin/env bash
# The layers' direction, checked on the dependency graph: each crate below must not reach
# (directly or through another crate) what its layer may never know. The crates being separate
# already keeps a layer from importing one above it; this keeps a lower layer from gaining a
# dependency on HTTP, the store or the services through a new Cargo.toml line.
set -euo pipefail
cd "$(dirname "$0")/.."

forbid() {
  local crate=$1
  shift
  local deps
  deps=$(cargo tree --quiet --edges normal --prefix none --format '{p}' -p "$crate" | awk '{print $1}' | sort -u)
  local bad=0
  for f in "$@"; do
    if grep -qx "$f" <<<"$deps"; then
      echo "layer violation: $crate depends on $f" >&2
      bad=1
    fi
  done
  return $bad
}

http="axum hyper hyper-util tower tower-service clap"
status=0
forbid falra-core $http falra || status=1
forbid falra-runtime $http falra falra-core falra-store sqlx || status=1
forbid falra-store $http falra falra-core falra-runtime || status=1
for lower in falra-sandbox falra-tenants falra-policies falra-builtins; do
  forbid "$lower" $http falra falra-core falra-runtime falra-store sqlx || status=1
done
if [ $status -eq 0 ]; then
  echo "layers: ok (core, runtime, store and the lower crates reach no layer above them)"
fi
exit $status
