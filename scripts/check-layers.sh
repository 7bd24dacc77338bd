#!/usr/bin/env bash
# The layers' direction, checked on the dependency graph: each crate below must not reach
# (directly or through another crate) what its layer may never know. The crates being separate
# already keeps a layer from importing one above it; this keeps a lower layer from gaining a
# dependency on HTTP, the store or the services through a new Cargo.toml line.
set -euo pipefail
cd "$(dirname "$0")/.."

# forbid_at DEPTH CRATE DEP...: CRATE reaches none of DEP within DEPTH edges ("" = any depth,
# 1 = named in its own Cargo.toml).
forbid_at() {
  local depth=$1 crate=$2
  shift 2
  local deps
  deps=$(cargo tree --quiet --edges normal ${depth:+--depth "$depth"} --prefix none --format '{p}' -p "$crate" | awk '{print $1}' | sort -u)
  local bad=0
  for f in "$@"; do
    if grep -qx "$f" <<<"$deps"; then
      echo "layer violation: $crate depends${depth:+ directly} on $f" >&2
      bad=1
    fi
  done
  return $bad
}
forbid() { forbid_at "" "$@"; }
forbid_direct() { forbid_at 1 "$@"; }

http="axum hyper hyper-util tower tower-service clap"
status=0
# The core reaches hyper and tower only through falra-builtins (the S3 SDK's HTTP client); it
# names none of them itself and never reaches the server side.
forbid falra-core axum clap falra || status=1
forbid_direct falra-core $http || status=1
forbid falra-runtime $http falra falra-core falra-store sqlx || status=1
forbid falra-store $http falra falra-core falra-runtime || status=1
for lower in falra-sandbox falra-tenants falra-policies; do
  forbid "$lower" $http falra falra-core falra-runtime falra-store sqlx || status=1
done
# The built-ins speak S3 through the AWS SDK, whose HTTP client is hyper and tower: a client,
# never a server, so only the server side (axum) and the command line stay out.
forbid falra-builtins axum clap falra falra-core falra-runtime falra-store sqlx || status=1
if [ $status -eq 0 ]; then
  echo "layers: ok (core, runtime, store and the lower crates reach no layer above them)"
fi
exit $status
