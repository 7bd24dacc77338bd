#!/usr/bin/env bash
# The ETL's S3 path, two builds of the daemon in one run: BASE_BIN (an earlier build, e.g. the
# hand-written S3 client's) against this build, on the same input, alternating, RUNS times each,
# against two local S3-compatible servers: s3s-fs (Rust: the client is what is measured) and
# moto_server (Python: a slow server). Prints input rows per second per build and server and
# the ratio of this build's median to the base's. Needs scripts/test-python.sh and
# scripts/test-tools.sh to have run (moto, s3s-fs).
# Usage: BASE_BIN=/path/to/old/falra bash bench/s3.sh   Env: N=200000 RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${N:-200000}; RUNS=${RUNS:-3}
PEERS=${PEERS:-$ROOT/../shared/bench/etl}
RES=${RES:-$ROOT/bench/results/s3}
WORK=$(mktemp -d /tmp/falra-s3.XXXXXX)
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
: "${BASE_BIN:?set BASE_BIN to the daemon build to compare with}"
cargo build --release -p falra -q
S3PY=$(bash scripts/test-python.sh)
bash scripts/test-tools.sh

port=18890; web=$((port + 1)); moto=$((port + 2)); fs=$((port + 3))
/usr/bin/python3 "$PEERS/gen.py" "$N" --out "$WORK" --name s3_synth 2>/dev/null
/usr/bin/python3 -m http.server "$web" --bind 127.0.0.1 --directory "$WORK" > /dev/null 2>&1 &
PIDS+=($!)
"$(dirname "$S3PY")/moto_server" -H 127.0.0.1 -p "$moto" > /dev/null 2>&1 &
PIDS+=($!)
mkdir -p "$WORK/fs"
target/tools/bin/s3s-fs --host 127.0.0.1 --port "$fs" --access-key S3RVER --secret-key S3RVER "$WORK/fs" > /dev/null 2>&1 &
PIDS+=($!)
for p in "$moto" "$fs"; do
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
  "$S3PY" tests/fixtures/etl_data.py bucket "http://127.0.0.1:$p" bench
done

# One daemon per build, each with the tenant, its secret and the same policy.
declare -A URL TOKEN
n=0
for build in base new; do
  bin=$FALRA; [[ $build == base ]] && bin=$BASE_BIN
  n=$((n + 1)); p=$((port + 10 + n))
  DAEMON_BIN=$bin start_daemon "falra-$build" "$p" --egress-allow-private
  URL[$build]=$FALRA_URL
  "$FALRA" tenant add caro > /dev/null
  "$FALRA" policy set caro builtins=true timeout_ms=900000 cpu_percent=200 > /dev/null
  "$FALRA" secret set caro s3 '{"access_key_id": "S3RVER", "secret_access_key": "S3RVER"}' > /dev/null
  TOKEN[$build]=$("$FALRA" token issue caro --json | sed -n 's/.*"token": "\(flr_[0-9a-f]*\)".*/\1/p')
done

job() {  # job TOKEN S3PORT
  etl_job "$1" "http://127.0.0.1:$web/s3_synth.zip" \
    "{\"fn\": \"cameo_df.write_to_s3\", \"s3_url\": \"http://127.0.0.1:$2/bench\", \"s3_key\": \"s3\", \"directory\": \"out/\"}"
}

for server in s3s-fs moto; do
  sp=$fs; [[ $server == moto ]] && sp=$moto
  for _ in $(seq "$RUNS"); do
    for build in base new; do
      job "${TOKEN[$build]}" "$sp" > "$WORK/job.json"
      start=$(date +%s.%N)
      curl -s "${URL[$build]}/v1/call" --data-binary @"$WORK/job.json" > "$WORK/answer.json"
      end=$(date +%s.%N)
      python3 - "$WORK/answer.json" "$start" "$end" "$server" "$build" >> "$RES/runs.txt" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
if not a.get("ok"):
    sys.exit("%s on %s failed: %s" % (sys.argv[5], sys.argv[4], a))
r = a["result"]
wall = float(sys.argv[3]) - float(sys.argv[2])
print("%s %s wall=%.3f rows_in=%d bytes=%d requests=%d rss_kb=%d" % (
    sys.argv[4], sys.argv[5], wall, r["rows_in"], r["bytes_written"], r["s3_requests"],
    r["peak_rss_bytes"] // 1024))
PY
    done
  done
done

python3 - "$RES/runs.txt" <<'PY' | tee "$RES/summary.txt"
import re, statistics as st, sys
runs = {}
for line in open(sys.argv[1]):
    server, build = line.split()[:2]
    d = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
    runs.setdefault((server, build), []).append(d)
for server in ["s3s-fs", "moto"]:
    med = {b: st.median(r["wall"] for r in runs[(server, b)]) for b in ["base", "new"]}
    rows = runs[(server, "new")][0]["rows_in"]
    mb = runs[(server, "new")][0]["bytes"] / 2**20
    rss = {b: max(r["rss_kb"] for r in runs[(server, b)]) / 1024 for b in ["base", "new"]}
    print("%-7s base %6.2f s (%7.0f rows/s, %5.1f MiB RSS)  new %6.2f s (%7.0f rows/s, %5.1f MiB RSS)  "
          "new/base throughput %.2fx  (%.0f MiB written per run)"
          % (server, med["base"], rows / med["base"], rss["base"], med["new"], rows / med["new"],
             rss["new"], med["base"] / med["new"], mb))
PY
