#!/usr/bin/env bash
# Noisy neighbour: one tenant's calls measured alone, then while another tenant runs CPU spins,
# fork bombs and memory bombs at full concurrency on the same daemon. Usage: bash bench/noisy.sh
# Env: DUR=8 (seconds per measurement) RUNS=2 GOOD_CONC=2 ATTACK_CONC=4 (per attack kind)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DUR=${DUR:-8}; RUNS=${RUNS:-2}; GOOD_CONC=${GOOD_CONC:-2}; ATTACK_CONC=${ATTACK_CONC:-4}
RES=${RES:-$ROOT/bench/results/noisy}
WORK=$(mktemp -d /tmp/falra-noisy.XXXXXX)
OUT=$RES/good.txt
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
ensure_tools

make_repo "$WORK/good" falra_test_add.py $'def add(int_a, int_b):\n    return int_a + int_b\n'
make_repo "$WORK/evil" hostile.py $'import os, time\n\ndef spin():\n    while True:\n        pass\n\ndef fork_bomb():\n    while True:\n        try:\n            if os.fork() == 0:\n                while True:\n                    pass\n        except OSError:\n            time.sleep(0.01)\n\ndef memory_bomb():\n    hoard = []\n    while True:\n        hoard.append(bytearray(16 << 20))\n'

start_daemon noisy 18795
good=$(add_tenant good "$WORK/good")
evil=$(add_tenant evil "$WORK/evil")
"$FALRA" policy set evil timeout_ms=3000 memory_mb=128 pids=32 >/dev/null
body="{\"token\": \"$good\", \"fn\": \"falra_test_add.add\", \"int_a\": 1, \"int_b\": 2}"
WRK_BODY=$body wrk -t1 -c"$GOOD_CONC" -d2s -s bench/post.lua "$FALRA_URL/v1/call" >/dev/null

echo "== quiet"
for i in $(seq "$RUNS"); do bench_wrk quiet "$GOOD_CONC" "${DUR}s" "$body"; done

echo "== under attack: spin, fork_bomb, memory_bomb at concurrency $ATTACK_CONC each"
attackers=()
for kind in spin fork_bomb memory_bomb; do
  WRK_BODY="{\"token\": \"$evil\", \"fn\": \"hostile.$kind\"}" \
    wrk -t1 -c"$ATTACK_CONC" -d"$(( (DUR + 1) * RUNS + 4 ))s" --timeout 30s -s bench/post.lua \
    "$FALRA_URL/v1/call" > "$RES/attack-$kind.txt" 2>&1 &
  attackers+=($!)
done
sleep 3
for i in $(seq "$RUNS"); do bench_wrk attacked "$GOOD_CONC" "${DUR}s" "$body"; done
wait "${attackers[@]}" || true
grep -h '^FALRA_WRK' "$RES"/attack-*.txt | sed 's/^/attacker /' || true
curl -fs "$FALRA_URL/healthz" >/dev/null && echo "daemon still healthy"

python3 - "$OUT" <<'PY'
import re, statistics as st, sys
rows = {}
for line in open(sys.argv[1]):
    d = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}
    rows.setdefault(line.split()[0], []).append(d)
med = lambda rs, k: st.median(r[k] for r in rs)
print(f"\n{'good tenant':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
for name in ("quiet", "attacked"):
    rs = rows[name]
    print(f"{name:<12}{med(rs,'rps'):>9.0f}{med(rs,'p50_us')/1e3:>9.2f}{med(rs,'p99_us')/1e3:>9.2f}{sum(r['errors'] for r in rs):>8.0f}")
q, a = rows["quiet"], rows["attacked"]
print(f"under attack: p50 {med(a,'p50_us')/med(q,'p50_us'):.2f}x, p99 {med(a,'p99_us')/med(q,'p99_us'):.2f}x, req/s {med(a,'rps')/med(q,'rps'):.2f}x of quiet")
PY
