#!/usr/bin/env bash
# Virtualenv builds with uv and the node's wheel cache against pip builds of the same inputs,
# each through the daemon's own build path (sandboxed children, the build gateway), from a
# local PEP 503 index with PEP 658 metadata on loopback (bench/simple_index.py). Measured: the
# deploy's `venv` step (and the whole sync) of
#   cold   pandas, nothing cached (the wheel cache and the unpacked wheels emptied before
#          each run);
#   warm   pandas into a new virtualenv (a requirements file of its own), wheels cached;
#   add1   one package added to a set of ten already built;
#   disk   what 20 tenants with pandas (each its own file) take: virtualenvs, the wheel cache
#          and the build arena's unpacked wheels, counted together (a file linked from
#          several places is on disk once, and counted once).
# Usage: bash bench/deps.sh   Env: RUNS=3 TENANTS=20
# Setup only: the wheels are fetched from PyPI once into target/bench-wheels; every measured
# build reads them from 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
RUNS=${RUNS:-3}; TENANTS=${TENANTS:-20}
RES=${RES:-$ROOT/bench/results/deps}
WORK=$(mktemp -d /tmp/falra-bench.XXXXXX)
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
cargo build --release -p falra -q
bash scripts/install-uv.sh

TEN=(six tabulate idna certifi urllib3 charset-normalizer requests packaging attrs click)
ADDED=pyparsing
WHEELS=$ROOT/target/bench-wheels
if [[ ! -f $WHEELS/.complete ]]; then
  echo "fetching the benchmark's wheels into $WHEELS (once)" >&2
  /usr/bin/python3 -m pip download -q --disable-pip-version-check --only-binary :all: \
    -d "$WHEELS" pandas "${TEN[@]}" "$ADDED"
  touch "$WHEELS/.complete"
fi
/usr/bin/python3 bench/simple_index.py "$WHEELS" "$WORK/index"
/usr/bin/python3 bench/simple_index.py --serve "$WORK/index" 18851 > "$WORK/index.log" 2>&1 &
PIDS+=($!)
INDEX=http://127.0.0.1:18851/simple/
for _ in $(seq 50); do curl -fs "$INDEX" >/dev/null && break; sleep 0.1; done

# sync NAME: syncs the tenant; prints "<venv step ms> <whole sync ms>".
sync() {
  local t0 t1 body
  t0=$(date +%s%N)
  body=$(curl -s -X POST "$FALRA_URL/admin/v1/tenants/$1/sync" \
    -H "Authorization: Bearer $FALRA_ADMIN_TOKEN")
  t1=$(date +%s%N)
  echo "$body" | /usr/bin/python3 -c '
import json, sys
b = json.load(sys.stdin)
steps = b.get("steps") or (b.get("error") or {}).get("detail", {}).get("steps") or []
venv = [s["ms"] for s in steps if s["step"] == "venv"]
if "error" in b or not venv:
    sys.exit("sync failed: %s" % json.dumps(b)[:2000])
print(venv[0], sys.argv[1])' "$(( (t1 - t0) / 1000000 ))"
}

# tenant NAME REQUIREMENTS: a repository with that requirements.txt, the tenant made on it.
tenant() {
  make_repo "$WORK/repo-$FALRA_BUILDER-$1" requirements.txt "$2"
  printf 'def ok():\n    return 1\n' > "$WORK/repo-$FALRA_BUILDER-$1/app.py"
  git -C "$WORK/repo-$FALRA_BUILDER-$1" add -A
  git -C "$WORK/repo-$FALRA_BUILDER-$1" -c user.name=bench -c user.email=bench@localhost commit -qm app
  "$FALRA" tenant add "$1" --repo "file://$WORK/repo-$FALRA_BUILDER-$1" >/dev/null
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

run_builder() {
  FALRA_BUILDER=$1; shift
  local port=$1; shift
  start_daemon "$FALRA_BUILDER" "$port" --pip-index-url "$INDEX" --egress-allow-private "$@"
  local data=$WORK/$FALRA_BUILDER out=$RES/$FALRA_BUILDER.txt
  : > "$out"
  for i in $(seq "$RUNS"); do
    rm -rf "$data/wheels" "$data/builds/.uv-cache"
    tenant "cold$i" $'pandas\n'"# cold $i"$'\n'
    echo "cold $(sync "cold$i")" | tee -a "$out"
  done
  for i in $(seq "$RUNS"); do
    tenant "warm$i" $'pandas\n'"# warm $i"$'\n'
    echo "warm $(sync "warm$i")" | tee -a "$out"
  done
  for i in $(seq "$RUNS"); do
    tenant "ten$i" "$(printf '%s\n' "${TEN[@]}")"$'\n'"# run $i"$'\n'
    sync "ten$i" > /dev/null
    printf '%s\n' "${TEN[@]}" "$ADDED" "# run $i" > "$WORK/repo-$FALRA_BUILDER-ten$i/requirements.txt"
    git -C "$WORK/repo-$FALRA_BUILDER-ten$i" -c user.name=bench -c user.email=bench@localhost commit -qam add
    echo "add1 $(sync "ten$i")" | tee -a "$out"
  done
  # Disk: TENANTS tenants with pandas, each its own file, on a node with nothing else.
  rm -rf "$data/wheels" "$data/builds/.uv-cache"
  for v in "$data"/venvs/*; do rm -rf "$v"; done
  touch "$WORK/disk-start"
  for i in $(seq "$TENANTS"); do
    tenant "disk$i" $'pandas\n'"# tenant $i"$'\n'
    sync "disk$i" > /dev/null
  done
  # The disk tenants' virtualenvs (those made since), with the node's caches, in one count.
  local venvs total
  find "$data/venvs" -mindepth 1 -maxdepth 1 -type d -newer "$WORK/disk-start" -print0 \
    > "$WORK/disk-venvs"
  venvs=$(du -scb --files0-from="$WORK/disk-venvs" | tail -1 | cut -f1)
  for extra in "$data/wheels" "$data/builds"; do
    [[ -d $extra ]] && printf '%s\0' "$extra" >> "$WORK/disk-venvs"
  done
  total=$(du -scb --files0-from="$WORK/disk-venvs" | tail -1 | cut -f1)
  echo "disk venvs=$venvs total=$total" | tee -a "$out"
  kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
}

echo "load at start: $(cat /proc/loadavg)" > "$RES/load.txt"
run_builder uv 18852
run_builder pip 18853 --uv none

/usr/bin/python3 - "$RES" "$TENANTS" <<'PY' | tee "$RES/summary.txt"
import statistics, sys
res, tenants = sys.argv[1], int(sys.argv[2])
def load(b):
    rows = {}
    disk = {}
    for line in open("%s/%s.txt" % (res, b)):
        kind, *rest = line.split()
        if kind == "disk":
            disk = dict(kv.split("=") for kv in rest)
        else:
            rows.setdefault(kind, []).append((int(rest[0]), int(rest[1])))
    return rows, disk
uv, uv_disk = load("uv")
pip, pip_disk = load("pip")
med = lambda rows, i: statistics.median(r[i] for r in rows)
print("%-6s %22s %22s %9s" % ("", "uv venv / sync ms", "pip venv / sync ms", "uv : pip"))
for kind in ("cold", "warm", "add1"):
    u, p = uv[kind], pip[kind]
    print("%-6s %10d / %9d %10d / %9d %8.2fx" % (
        kind, med(u, 0), med(u, 1), med(p, 0), med(p, 1), med(u, 0) / med(p, 0)))
uv_total, pip_total = int(uv_disk["total"]), int(pip_disk["total"])
print("disk   %d tenants: uv %.0f MB (virtualenvs alone %.0f MB), pip %.0f MB: %.2fx" % (
    tenants, uv_total / 1e6, int(uv_disk["venvs"]) / 1e6, pip_total / 1e6, uv_total / pip_total))
PY
