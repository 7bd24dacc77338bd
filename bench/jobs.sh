#!/usr/bin/env bash
# Jobs through the PostgreSQL queue against the same nodes' synchronous calls, in one run:
#   - for 1, 2 and 3 nodes on one fresh database: the sync call throughput of a no-op function
#     (wrk at concurrency 8 against every node at once, summed), then no-op jobs per second
#     through the queue (JOBS jobs submitted over the nodes, from the first submit to the last
#     end as the jobs' own timestamps say), each node running up to 8 jobs at once;
#   - submit → result latency of one job at a time on the idle one-node cluster (p50, p90).
# Needs PostgreSQL: run it as `bash scripts/with-postgres.sh bash bench/jobs.sh`.
# Sync calls and jobs are measured in turn RUNS times per cluster size (the machine's speed
# drifts), and the medians compared.
# Env: DUR=5 (seconds per wrk run) JOBS=1000 LATENCY_JOBS=60 NODES="1 2 3" RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DUR=${DUR:-5}; JOBS=${JOBS:-1000}; LATENCY_JOBS=${LATENCY_JOBS:-60}; NODES=${NODES:-"1 2 3"}
RUNS=${RUNS:-3}
RES=${RES:-$ROOT/bench/results/jobs}
WORK=$(mktemp -d /tmp/falra-bench-jobs.XXXXXX)
OUT=$RES/falra.txt
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
ensure_tools
[[ -n ${FALRA_TEST_DATABASE_URL:-} ]] || { echo "run through scripts/with-postgres.sh" >&2; exit 1; }
psql=$(ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -1)

make_repo "$WORK/repo" noop.py $'def noop():\n    return 1\n'
echo "load at start: $(cat /proc/loadavg)" > "$RES/load.txt"
port=18890
for n in $NODES; do
  db=falra_bench_jobs_${n}_$$
  "$psql" "$FALRA_TEST_DATABASE_URL" -qc "CREATE DATABASE $db"
  export FALRA_DATABASE_URL=${FALRA_TEST_DATABASE_URL%/*}/$db FALRA_SECRET_KEY_FILE=$WORK/cluster.key
  urls=()
  for i in $(seq "$n"); do
    start_daemon "falra-$n-$i" "$port" --job-workers 8
    urls+=("$FALRA_URL")
    port=$((port + 1))
  done
  export FALRA_URL=${urls[0]}
  token=$(add_tenant caro "$WORK/repo")
  jobs_token=$("$FALRA" token issue caro --scopes call,jobs --json | sed -n 's/.*"token": "\(flr_[0-9a-f]*\)".*/\1/p')
  body="{\"token\": \"$token\", \"fn\": \"noop.noop\"}"
  for u in "${urls[@]}"; do
    check=$(curl -s "$u/v1/call" -d "$body")
    [[ $check == *'"result":1'* ]] || { echo "node $u did not answer 1: $check" >&2; exit 1; }
    WRK_BODY=$body wrk -t1 -c8 -d2s -s bench/post.lua "$u/v1/call" >/dev/null
  done
  # A first small batch of jobs warms every node's claimer and children.
  /usr/bin/python3 bench/jobs.py throughput "$jobs_token" 16 "${urls[@]}" >/dev/null
  for run in $(seq "$RUNS"); do
    # Sync calls: every node at once, summed.
    pids=()
    for i in "${!urls[@]}"; do
      WRK_BODY=$body wrk -t1 -c8 -d"${DUR}s" --timeout 30s -s bench/post.lua "${urls[$i]}/v1/call" \
        | grep '^FALRA_WRK' > "$WORK/wrk.$n.$i" &
      pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    rps=$(cat "$WORK"/wrk."$n".* | sed -n 's/.* rps=\([0-9.]*\).*/\1/p' | paste -sd+ | bc)
    errors=$(cat "$WORK"/wrk."$n".* | sed -n 's/.* errors=\([0-9]*\).*/\1/p' | paste -sd+ | bc)
    [[ $errors == 0 ]] || { echo "sync calls on $n nodes had $errors failed requests" >&2; exit 1; }
    echo "nodes=$n run=$run sync_rps=$rps" | tee -a "$OUT"
    # Jobs through the queue.
    line=$(/usr/bin/python3 bench/jobs.py throughput "$jobs_token" "$JOBS" "${urls[@]}")
    echo "nodes=$n run=$run $line" | tee -a "$OUT"
  done
  if [[ $n == 1 ]]; then
    # On the idle node: what the runs above left (call records, the views read) settles first.
    sleep 3
    line=$(/usr/bin/python3 bench/jobs.py latency "$jobs_token" "$LATENCY_JOBS" "${urls[0]}")
    echo "nodes=1 $line" | tee -a "$OUT"
  fi
  for p in "${PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
  PIDS=()
done
echo "load at end: $(cat /proc/loadavg)" >> "$RES/load.txt"

/usr/bin/python3 - "$OUT" <<'PY'
import re, statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    d = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
    r = rows.setdefault(int(d["nodes"]), {})
    for k, v in d.items():
        r.setdefault(k, []).append(v)
med = lambda r, k: st.median(r[k])
print(f"\n{'nodes':>5}{'sync req/s':>12}{'jobs/s':>9}{'jobs/sync':>11}   (medians of {len(rows[min(rows)]['sync_rps'])} runs)")
for n, r in sorted(rows.items()):
    ratios = [j / s for j, s in zip(r["jobs_per_s"], r["sync_rps"])]
    print(f"{n:>5}{med(r, 'sync_rps'):>12.0f}{med(r, 'jobs_per_s'):>9.1f}{med(r, 'jobs_per_s') / med(r, 'sync_rps'):>11.3f}"
          f"   per run: {', '.join(f'{x:.2f}' for x in ratios)}")
one = rows.get(1, {})
if "latency_p50_ms" in one:
    print(f"submit -> result on an idle node: p50 {med(one, 'latency_p50_ms'):.2f} ms, p90 {med(one, 'latency_p90_ms'):.2f} ms")
PY
cat "$RES/load.txt"
