#!/usr/bin/env bash
# Per-call cost of Falra against the baselines, all in one run on this machine:
#   - falra: the seed call end to end over HTTP (release build), wrk at concurrency 1 and 8;
#   - the reference baselines (the seed's in-process FastAPI server, a naive fresh-child server,
#     interpreter start-up floors, fork floor) from the shared call-baseline scripts.
# Prints one table with ratios. Usage: bash bench/call.sh
# Env: DUR=5 (seconds per wrk run) RUNS=2 CONCS="1 8" BASELINES=path/to/shared/bench/call
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DUR=${DUR:-5}; RUNS=${RUNS:-2}; CONCS=${CONCS:-"1 8"}
BASELINES=${BASELINES:-$ROOT/../shared/bench/call}
RES=${RES:-$ROOT/bench/results/call}
WORK=$(mktemp -d /tmp/falra-bench.XXXXXX)
rm -rf "$RES"; mkdir -p "$RES"

if ! command -v wrk >/dev/null || ! command -v hyperfine >/dev/null; then
  apt-get update -qq && apt-get install -y -qq wrk hyperfine >/dev/null
fi
cargo build --release -p falra -q
FALRA=$ROOT/target/release/falra

# ---- falra, with one tenant holding the seed's module
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
git init -q -b main "$WORK/repo"
printf 'def add(int_a, int_b):\n    return int_a + int_b\n' > "$WORK/repo/falra_test_add.py"
git -C "$WORK/repo" add -A
git -C "$WORK/repo" -c user.name=bench -c user.email=bench@localhost commit -qm seed
export FALRA_ADMIN_TOKEN=$("$FALRA" admin init --data-dir "$WORK/data")
PORT=18790
FALRA_LOG=warn "$FALRA" serve --data-dir "$WORK/data" --listen 127.0.0.1:$PORT 2> "$RES/falra.log" &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
export FALRA_URL=http://127.0.0.1:$PORT
"$FALRA" tenant add caro --repo "file://$WORK/repo" >/dev/null
"$FALRA" tenant sync caro >/dev/null
TOKEN=$("$FALRA" token issue caro --scopes call | sed -n 's/.*"token": "\(flr_[0-9a-f]*\)".*/\1/p')
export WRK_BODY="{\"token\": \"$TOKEN\", \"fn\": \"falra_test_add.add\", \"int_a\": 1, \"int_b\": 2}"
check=$(curl -s "http://127.0.0.1:$PORT/v1/call" -d "$WRK_BODY")
echo "check: $check"
[[ $check == *'"result":3'* ]] || { echo "falra did not answer 3" >&2; exit 1; }

echo "== falra"
echo "load at start: $(cat /proc/loadavg)" > "$RES/load.txt"
for c in $CONCS; do
  wrk -t1 -c"$c" -d2s -s bench/post.lua "http://127.0.0.1:$PORT/v1/call" >/dev/null
  for i in $(seq "$RUNS"); do
    wrk -t1 -c"$c" -d"${DUR}s" --timeout 10s -s bench/post.lua "http://127.0.0.1:$PORT/v1/call" \
      | grep '^FALRA_WRK' | sed "s/^/c=$c run=$i /" | tee -a "$RES/falra.txt"
  done
done
kill "${PIDS[@]}" 2>/dev/null || true

# ---- baselines, same machine, same run
echo "== baselines ($BASELINES)"
env -u WRK_BODY BASE=$WORK/baseline DUR=$DUR RUNS=$RUNS CONCS="$CONCS" EXTRA=0 RES=$RES/baseline \
  bash "$BASELINES/run_all.sh" > "$RES/baseline.txt" 2>&1 || { tail -30 "$RES/baseline.txt"; exit 1; }
echo "load at end: $(cat /proc/loadavg)" >> "$RES/load.txt"

python3 - "$RES" <<'PY'
import glob, json, os, re, statistics as st, sys
res = sys.argv[1]
kv = lambda line: {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
rows = {}
for line in open(f"{res}/falra.txt"):
    d = kv(line); rows.setdefault(("falra (fresh child per call)", int(d["c"])), []).append(d)
for f in glob.glob(f"{res}/baseline/*.wrk"):
    name, c, _ = os.path.basename(f)[:-4].rsplit(".", 2)
    line = next((l for l in open(f) if l.startswith("RESULT")), None)
    if line:
        d = kv(line); rows.setdefault((name, int(c[1:])), []).append(d)
hf = {r["command"]: r["median"] * 1e3 for r in json.load(open(f"{res}/baseline/hyperfine.json"))["results"]}
bare = next(v for k, v in hf.items() if k.endswith("-I -S -c pass"))
med = lambda rs, k: st.median(r[k] for r in rs)
print(f"\n{'approach':<34}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
for (name, c), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    print(f"{name:<34}{c:>5}{med(rs,'rps'):>9.0f}{med(rs,'p50_us')/1e3:>9.2f}{med(rs,'p99_us')/1e3:>9.2f}")
print(f"\nbare `python3 -I -S -c pass` start-up (hyperfine median): {bare:.2f} ms")
f = {c: rs for (n, c), rs in rows.items() if n.startswith("falra")}
for c in sorted(f):
    p50 = med(f[c], "p50_us") / 1e3; rps = med(f[c], "rps")
    spawn = rows.get(("spawn_1w", c)); seed = rows.get(("seed_1w", c))
    parts = [f"c={c}: falra p50 {p50:.2f} ms = {p50/bare:.2f}x bare python start-up"]
    if spawn: parts.append(f"{rps/med(spawn,'rps'):.2f}x the naive fresh-child server's req/s, p50 {p50/(med(spawn,'p50_us')/1e3):.2f}x its p50")
    if seed: parts.append(f"{rps/med(seed,'rps'):.3f}x the in-process seed server's req/s")
    print("; ".join(parts))
print(open(f"{res}/load.txt").read().strip())
PY
