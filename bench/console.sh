#!/usr/bin/env bash
# How fast the operator console's pages load from a local daemon, in the system Chromium, against
# a load of /healthz from the same daemon in the same browser (bench/console.mjs says how each
# sample is taken). The daemon holds TENANTS tenants with CALLS calls each and a failed call
# among them, so every view has rows to draw.
# Usage: bash bench/console.sh   Env: RUNS=20 TENANTS=10 CALLS=20
# Needs the console tests' packages (scripts/test-tools.sh installs them) and Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-20}; TENANTS=${TENANTS:-10}; CALLS=${CALLS:-20}
RES=${RES:-$ROOT/bench/results/console}
WORK=$(mktemp -d /tmp/falra-bench.XXXXXX)
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
ensure_tools
[[ -f tests/console/node_modules/playwright-core/package.json ]] || bash scripts/test-tools.sh

make_repo "$WORK/repo" m.py $'def add(a, b):\n    return a + b\n\ndef fail():\n    raise ValueError("no")\n'
start_daemon console 18830
call_id=
for i in $(seq "$TENANTS"); do
  token=$(add_tenant "t$i" "$WORK/repo")
  for _ in $(seq "$CALLS"); do
    curl -fs "$FALRA_URL/v1/call" -H 'Content-Type: application/json' \
      -d "{\"token\": \"$token\", \"fn\": \"m.add\", \"a\": 1, \"b\": 2}" > "$WORK/call.json"
  done
  call_id=$(sed -n 's/.*"call_id": *"\([^"]*\)".*/\1/p' "$WORK/call.json")
  curl -s "$FALRA_URL/v1/call" -H 'Content-Type: application/json' \
    -d "{\"token\": \"$token\", \"fn\": \"m.fail\"}" > /dev/null
done
[[ -n $call_id ]] || { echo "bench: no call id in $(cat "$WORK/call.json")" >&2; exit 1; }
echo "load at start: $(cat /proc/loadavg)" > "$RES/load.txt"
for f in /ui /ui/assets/app.js /ui/assets/style.css; do
  printf '%-22s %6s bytes\n' "$f" "$(curl -fs "$FALRA_URL$f" | wc -c)"
done | tee "$RES/sizes.txt"
FALRA_OPERATOR_TOKEN=$FALRA_ADMIN_TOKEN FALRA_TENANT=t1 FALRA_CALL=$call_id RUNS=$RUNS \
  CONSOLE_MODULES=$ROOT/tests/console node bench/console.mjs | tee "$RES/pages.txt"
