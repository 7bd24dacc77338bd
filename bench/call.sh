#!/usr/bin/env bash
# Per-call cost of Falra against its baselines, all in one run on this machine:
#   - falra as it ships (sandboxed, each call's process forked from the zygote, children
#     started ahead of calls); with --no-zygote (each call's interpreter exec'd: the earlier
#     default); sandboxed with --no-prewarm (every child started on demand, forked); and
#     --sandbox off --no-prewarm (the same runner spawned on demand as a plain child): the seed
#     call end to end over HTTP, wrk at concurrency 1 and 8, the daemons' runs interleaved;
#   - the reference baselines (the seed's in-process FastAPI server, a naive fresh-child server,
#     interpreter start-up floors, fork floor) from the shared call-baseline scripts.
#   - calls forked from a preload zygote (a module importing pandas, preloaded) against the same
#     calls without it, by bench/preload.sh (PRELOAD=0 skips it).
# Prints one table with ratios. Usage: bash bench/call.sh
# Env: DUR=5 (seconds per wrk run) RUNS=2 CONCS="1 8" BASELINES=path/to/shared/bench/call
#      (BASELINES=none: the daemons only)
#      BEFORE_BIN=path/to/an/earlier/falra adds that build, as shipped, interleaved with the
#      others, and prints this build's cost as a ratio of it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DUR=${DUR:-5}; RUNS=${RUNS:-2}; CONCS=${CONCS:-"1 8"}
BASELINES=${BASELINES:-$ROOT/../shared/bench/call}
RES=${RES:-$ROOT/bench/results/call}
WORK=$(mktemp -d /tmp/falra-bench.XXXXXX)
OUT=$RES/falra.txt
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
ensure_tools

make_repo "$WORK/repo" falra_test_add.py $'def add(int_a, int_b):\n    return int_a + int_b\n'
echo "load at start: $(cat /proc/loadavg)" > "$RES/load.txt"
# All three daemons run side by side and their runs are interleaved, so that a drift in the
# machine's speed during the run (this VM's varies from minute to minute) does not favour the
# mode that happens to run first.
declare -A URL BODY
port=18790
MODES="on on_exec on_cold off_cold"
[[ -n ${BEFORE_BIN:-} ]] && MODES="before $MODES"
# Beside a PostgreSQL cluster (scripts/with-postgres.sh), the same daemon as shipped on a
# PostgreSQL store too.
[[ -n ${FALRA_TEST_DATABASE_URL:-} ]] && MODES="$MODES on_pg"
for mode in $MODES; do
  case $mode in
    on|before|on_pg) args=() ;;
    on_exec) args=(--no-zygote) ;;
    on_cold) args=(--no-prewarm) ;;
    off_cold) args=(--sandbox off --no-prewarm) ;;
  esac
  if [[ $mode == before ]]; then
    DAEMON_BIN=$BEFORE_BIN start_daemon "falra-$mode" "$port" "${args[@]}"
  elif [[ $mode == on_pg ]]; then
    db=falra_bench_$$
    psql=$(ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -1)
    "$psql" "$FALRA_TEST_DATABASE_URL" -qc "CREATE DATABASE $db"
    FALRA_DATABASE_URL=${FALRA_TEST_DATABASE_URL%/*}/$db FALRA_SECRET_KEY_FILE=$WORK/cluster.key \
      start_daemon "falra-$mode" "$port" "${args[@]}"
  else
    start_daemon "falra-$mode" "$port" "${args[@]}"
  fi
  token=$(add_tenant caro "$WORK/repo")
  URL[$mode]=$FALRA_URL
  BODY[$mode]="{\"token\": \"$token\", \"fn\": \"falra_test_add.add\", \"int_a\": 1, \"int_b\": 2}"
  check=$(curl -s "$FALRA_URL/v1/call" -d "${BODY[$mode]}")
  [[ $check == *'"result":3'* ]] || { echo "falra ($mode) did not answer 3: $check" >&2; exit 1; }
  port=$((port + 1))
done
for c in $CONCS; do
  for mode in $MODES; do
    WRK_BODY=${BODY[$mode]} wrk -t1 -c"$c" -d2s -s bench/post.lua "${URL[$mode]}/v1/call" >/dev/null
  done
  for i in $(seq "$RUNS"); do
    for mode in $MODES; do
      FALRA_URL=${URL[$mode]} bench_wrk "sandbox_$mode" "$c" "${DUR}s" "${BODY[$mode]}"
    done
  done
done
# The zygote of the daemon as shipped, idle after its runs: its memory and what it forked.
curl -s "${URL[on]}/metrics" | grep -E '^falra_zygote_' > "$RES/zygote.txt" || true
for p in "${PIDS[@]}"; do kill "$p"; wait "$p" 2>/dev/null || true; done
PIDS=()

if [[ $BASELINES == none ]]; then
  echo "== baselines skipped (BASELINES=none)"
else
  echo "== baselines ($BASELINES)"
  env -u WRK_BODY BASE=$WORK/baseline DUR=$DUR RUNS=$RUNS CONCS="$CONCS" EXTRA=0 RES=$RES/baseline \
    bash "$BASELINES/run_all.sh" > "$RES/baseline.txt" 2>&1 || { tail -30 "$RES/baseline.txt"; exit 1; }
fi
echo "load at end: $(cat /proc/loadavg)" >> "$RES/load.txt"

python3 - "$RES" <<'PY'
import glob, json, os, re, statistics as st, sys
res = sys.argv[1]
kv = lambda line: {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
rows = {}
for line in open(f"{res}/falra.txt"):
    name = line.split()[0]
    d = kv(line); rows.setdefault(("falra " + name, int(d["c"])), []).append(d)
for f in glob.glob(f"{res}/baseline/*.wrk"):
    name, c, _ = os.path.basename(f)[:-4].rsplit(".", 2)
    line = next((l for l in open(f) if l.startswith("RESULT")), None)
    if line:
        d = kv(line); rows.setdefault((name, int(c[1:])), []).append(d)
hf_path = f"{res}/baseline/hyperfine.json"
hf = {r["command"]: r["median"] * 1e3 for r in json.load(open(hf_path))["results"]} if os.path.exists(hf_path) else {}
bare = next((v for k, v in hf.items() if k.endswith("-I -S -c pass")), None)
med = lambda rs, k: st.median(r[k] for r in rs)
print(f"\n{'approach':<26}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
for (name, c), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{name:<26}{c:>5}{med(rs,'rps'):>9.0f}{med(rs,'p50_us')/1e3:>9.2f}{med(rs,'p99_us')/1e3:>9.2f}")
if bare:
    print(f"\nbare `python3 -I -S -c pass` start-up (hyperfine median): {bare:.2f} ms")
for c in sorted({c for (_, c) in rows}):
    on = rows.get(("falra sandbox_on", c))
    cold, off = rows.get(("falra sandbox_on_cold", c)), rows.get(("falra sandbox_off_cold", c))
    spawn, seed = rows.get(("spawn_1w", c)), rows.get(("seed_1w", c))
    if not on:
        continue
    p50 = med(on, "p50_us") / 1e3; rps = med(on, "rps")
    parts = [f"c={c}: as shipped p50 {p50:.2f} ms, {rps:.0f} req/s"]
    if bare:
        parts.append(f"{p50/bare:.2f}x bare python start-up")
    if cold and off:
        cp50 = med(cold, "p50_us") / 1e3
        parts.append(f"started on demand the sandbox adds {cp50 - med(off,'p50_us')/1e3:+.2f} ms p50 and keeps {med(cold,'rps')/med(off,'rps'):.2f}x the unsandboxed req/s")
    if spawn:
        parts.append(f"{rps/med(spawn,'rps'):.2f}x the naive fresh-child server's req/s at {p50/(med(spawn,'p50_us')/1e3):.2f}x its p50")
    if seed:
        parts.append(f"{rps/med(seed,'rps'):.3f}x the in-process seed server's req/s")
    ex = rows.get(("falra sandbox_on_exec", c))
    if ex:
        parts.append(f"forked from the zygote: {rps/med(ex,'rps'):.2f}x the exec'd interpreter's req/s, {p50/(med(ex,'p50_us')/1e3):.2f}x its p50")
    pg = rows.get(("falra sandbox_on_pg", c))
    if pg:
        parts.append(f"on the PostgreSQL store: {med(pg,'rps')/rps:.3f}x the SQLite store's req/s, {med(pg,'p50_us')/1e3/p50:.3f}x its p50")
    before = rows.get(("falra sandbox_before", c))
    if before:
        parts.append(f"against the earlier build: {rps/med(before,'rps'):.3f}x its req/s, {p50/(med(before,'p50_us')/1e3):.3f}x its p50")
    print("; ".join(parts))
z = dict(l.split() for l in open(f"{res}/zygote.txt") if l.strip()) if os.path.exists(f"{res}/zygote.txt") else {}
if z:
    forks = int(z.get("falra_zygote_forks_total", 0))
    print(f"zygote idle after the runs: {int(z['falra_zygote_resident_bytes'])/2**20:.1f} MiB resident; "
          f"{forks} calls forked, {z.get('falra_zygote_fallbacks_total')} fell back to exec, "
          f"{int(z.get('falra_zygote_fork_microseconds_total', 0))/max(forks,1)/1e3:.2f} ms mean from asking to a sandboxed forked child")
print(open(f"{res}/load.txt").read().strip())
PY

if [[ ${PRELOAD:-1} != 0 ]]; then
  echo
  echo "== preloaded imports (bench/preload.sh)"
  RES=$RES/preload bash "$ROOT/bench/preload.sh" | grep -v '^falra_preload_'
fi
