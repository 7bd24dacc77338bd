#!/usr/bin/env bash
# The seed's ETL job (rename → melt → copy column → one CSV per 100 000 input rows) on N
# generated wide rows, in one run: falra as shipped (a call to a running daemon: download from a
# local HTTP server, sandboxed child, files written by write_to_dir) against `unzip -p`, pandas
# (dtype=str, the customer's own approach), polars and DuckDB (../shared/bench/etl). Every tool
# writes into tmpfs, so the disk is not what is measured. falra's rows are then compared with
# pandas' as a multiset (sorted, byte for byte). Finally the S3 path alone, against a local
# moto_server, on N_S3 rows.
# Usage: bash bench/etl.sh   Env: N=2000000 RUNS=3 N_S3=200000 PEERS=path/to/shared/bench/etl
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${N:-2000000}; RUNS=${RUNS:-3}; N_S3=${N_S3:-200000}
PEERS=${PEERS:-$ROOT/../shared/bench/etl}
RES=${RES:-$ROOT/bench/results/etl}
WORK=$(mktemp -d /tmp/falra-etl.XXXXXX)
OUT=$(mktemp -d /dev/shm/falra-etl-out.XXXXXX)
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
trap 'cleanup; rm -rf "$OUT"' EXIT
cargo build --release -p falra -q

venv=$ROOT/target/bench-venv
if ! "$venv/bin/python" -c "import pandas, polars, duckdb, pyarrow" 2>/dev/null; then
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check pandas polars duckdb pyarrow
fi
PY=$venv/bin/python

echo "== generating $N wide rows"
/usr/bin/python3 "$PEERS/gen.py" "$N" --out "$WORK" 2> "$RES/gen.txt"
ZIP=$WORK/aq_synth.zip

# measure LABEL CMD...: RUNS whole-process runs of CMD (its output dir emptied before each);
# appends "LABEL wall=S rss_kb=K" per run to $RES/runs.txt.
measure() {
  local label=$1; shift
  for _ in $(seq "$RUNS"); do
    rm -rf "${OUT:?}/$label"; mkdir -p "$OUT/$label"
    /usr/bin/time -f "$label wall=%e rss_kb=%M" -a -o "$RES/runs.txt" "$@" > /dev/null 2>> "$RES/stderr.txt"
  done
}

echo "== unzip -p, pandas, polars, duckdb ($RUNS runs each)"
measure unzip bash -c "unzip -p '$ZIP' > /dev/null"
measure pandas "$PY" "$PEERS/bench_pandas.py" "$ZIP" "$OUT/pandas" str
measure polars "$PY" "$PEERS/bench_polars.py" "$ZIP" "$OUT/polars" str
rm -rf "${OUT:?}/polars"
measure duckdb bash -c "unzip -p '$ZIP' | '$PY' '$PEERS/bench_duckdb.py' /dev/stdin '$OUT/duckdb' include varchar"
rm -rf "${OUT:?}/duckdb"   # only pandas' output is kept, for the comparison

echo "== falra"
port=18880
web=$((port + 1))
/usr/bin/python3 -m http.server "$web" --bind 127.0.0.1 --directory "$WORK" > /dev/null 2>&1 &
PIDS+=($!)
start_daemon falra-etl "$port" --egress-allow-private --etl-output-dir "$OUT/daemon"
"$FALRA" tenant add caro > /dev/null
# The output goes to tmpfs like every tool's, and tmpfs pages count against the writer's memory
# cgroup (they cannot be reclaimed): the limit must hold 1.4 GB of output. The job's own memory
# is its peak RSS, reported separately.
# Every peer uses both cores as it likes; the tenant gets them too (cpu_percent=200).
"$FALRA" policy set caro builtins=true timeout_ms=900000 memory_mb=4096 cpu_percent=200 > /dev/null
token=$("$FALRA" token issue caro --json | sed -n 's/.*"token": "\(flr_[0-9a-f]*\)".*/\1/p')
job() { etl_job "$token" "http://127.0.0.1:$web/$1" "$2"; }
job aq_synth.zip '{"fn": "cameo_df.write_to_dir", "directory": "falra/"}' > "$WORK/job.json"
for _ in $(seq "$RUNS"); do
  rm -rf "$OUT/daemon/caro/falra"
  start=$(date +%s.%N)
  curl -s "$FALRA_URL/v1/call" --data-binary @"$WORK/job.json" > "$WORK/answer.json"
  end=$(date +%s.%N)
  python3 - "$WORK/answer.json" "$start" "$end" >> "$RES/runs.txt" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
if not a.get("ok"):
    sys.exit("falra failed: %s" % a)
wall = float(sys.argv[3]) - float(sys.argv[2])
print("falra wall=%.2f rss_kb=%d cgroup_peak_kb=%d rows_out=%d" % (
    wall, a["result"]["peak_rss_bytes"] // 1024, a["usage"]["peak_memory_bytes"] // 1024,
    a["result"]["rows_out"]))
PY
done

echo "== comparing falra's rows with pandas' (as a multiset)"
rows() { find "$1" -name '*.csv' -print0 | sort -z | xargs -0 -n1 tail -q -n +2 | LC_ALL=C sort -S 2G; }
rows "$OUT/daemon/caro/falra" > "$WORK/falra.sorted"
rows "$OUT/pandas" > "$WORK/pandas.sorted"
if cmp -s "$WORK/falra.sorted" "$WORK/pandas.sorted"; then
  echo "same rows: yes ($(wc -l < "$WORK/falra.sorted") rows)" | tee "$RES/compare.txt"
else
  echo "same rows: NO" | tee "$RES/compare.txt"
  diff <(head -5 "$WORK/falra.sorted") <(head -5 "$WORK/pandas.sorted") | tee -a "$RES/compare.txt" || true
fi
rm -f "$WORK"/*.sorted

echo "== S3 path: $N_S3 rows to a local moto_server"
S3PY=$(bash scripts/test-python.sh)
s3port=$((port + 2))
"$(dirname "$S3PY")/moto_server" -H 127.0.0.1 -p "$s3port" > /dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$s3port/" > /dev/null && break; sleep 0.1; done
"$S3PY" tests/fixtures/etl_data.py bucket "http://127.0.0.1:$s3port" bench
/usr/bin/python3 "$PEERS/gen.py" "$N_S3" --out "$WORK" --name s3_synth 2>/dev/null
"$FALRA" secret set caro s3 '{"access_key_id": "bench", "secret_access_key": "bench"}' > /dev/null
"$FALRA" policy set caro --reset memory_mb > /dev/null   # back to the plan's 256 MB: no files here
job s3_synth.zip "{\"fn\": \"cameo_df.write_to_s3\", \"s3_url\": \"http://127.0.0.1:$s3port/bench\", \"s3_key\": \"s3\", \"directory\": \"out/\"}" > "$WORK/job_s3.json"
start=$(date +%s.%N)
curl -s "$FALRA_URL/v1/call" --data-binary @"$WORK/job_s3.json" > "$WORK/answer_s3.json"
end=$(date +%s.%N)
python3 - "$WORK/answer_s3.json" "$start" "$end" > "$RES/s3.txt" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))
if not a.get("ok"):
    sys.exit("falra (S3) failed: %s" % a)
r = a["result"]
wall = float(sys.argv[3]) - float(sys.argv[2])
print("s3: rows_in=%d rows_out=%d objects=%d bytes=%d requests=%d wall=%.2f s (%.0f input rows/s) peak_rss=%.1f MiB"
      % (r["rows_in"], r["rows_out"], r["objects_written"], r["bytes_written"], r["s3_requests"],
         wall, r["rows_in"] / wall, r["peak_rss_bytes"] / 2**20))
PY
cat "$RES/s3.txt"

python3 - "$RES" <<'PY'
import re, statistics as st, sys
res = sys.argv[1]
runs = {}
for line in open(f"{res}/runs.txt"):
    if "wall=" not in line:
        continue
    label = line.split()[0]
    d = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
    runs.setdefault(label, []).append(d)
med = {k: (st.median(r["wall"] for r in v), max(r["rss_kb"] for r in v)) for k, v in runs.items()}
print("\n%-8s %9s %12s" % ("tool", "wall s", "peak RSS MB"))
for k in ["unzip", "pandas", "polars", "duckdb", "falra"]:
    if k in med:
        print("%-8s %9.2f %12.1f" % (k, med[k][0], med[k][1] / 1024))
f = med["falra"][0]
print("\nfalra: %.1fx pandas, %.2fx polars, %.2fx duckdb, %.2fx the time of unzip -p; peak RSS %.1f MB"
      % (med["pandas"][0] / f, med["polars"][0] / f, med["duckdb"][0] / f, f / med["unzip"][0],
         med["falra"][1] / 1024))
PY
