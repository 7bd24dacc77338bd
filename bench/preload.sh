#!/usr/bin/env bash
# Calls forked from a preload zygote against the same calls without one, in one run: a function
# whose module imports pandas at its top level, one tenant with `"preload": [module]` and one
# without, on one daemon, called in turns, one call at a time. pandas and its dependencies come
# as wheels from a local index (python3 -m http.server on loopback), downloaded once into
# target/bench-wheels by pip. Prints p50/p90 per tenant, the ratio, and the idle preload
# zygote's memory. Usage: bash bench/preload.sh   Env: N=15 (calls without preload; 10x that
# with), RES=bench/results/preload
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
N=${N:-15}
RES=${RES:-$ROOT/bench/results/preload}
WORK=$(mktemp -d /tmp/falra-bench.XXXXXX)
rm -rf "$RES"; mkdir -p "$RES"
source "$ROOT/bench/lib.sh"
ensure_tools

WHEELS=$ROOT/target/bench-wheels
if ! compgen -G "$WHEELS/pandas-*.whl" >/dev/null; then
  mkdir -p "$WHEELS"
  /usr/bin/python3 -m pip download -q --disable-pip-version-check --only-binary=:all: \
    -d "$WHEELS" 'pandas<3'
fi
index_port=18899
/usr/bin/python3 -m http.server --bind 127.0.0.1 --directory "$WHEELS" "$index_port" \
  >/dev/null 2>&1 &
PIDS+=($!)

make_repo "$WORK/repo" frame.py $'import pandas as pd\n\ndef total(n):\n    return int(pd.DataFrame({"a": range(n)})["a"].sum())\n'
printf 'pandas<3\n' > "$WORK/repo/requirements.txt"
git -C "$WORK/repo" add -A
git -C "$WORK/repo" -c user.name=bench -c user.email=bench@localhost commit -qm requirements

start_daemon falra-preload 18898 --pip-index-url none \
  --pip-find-links "http://127.0.0.1:$index_port/" --egress-allow-private
declare -A TOKEN
for t in plain preloaded; do
  TOKEN[$t]=$(add_tenant "$t" "$WORK/repo")
  "$FALRA" policy set "$t" memory_mb=1024 timeout_ms=60000 >/dev/null
done
curl -fs -X PUT "$FALRA_URL/admin/v1/tenants/preloaded/policy" \
  -H "Authorization: Bearer $FALRA_ADMIN_TOKEN" -d '{"preload": ["frame"]}' >/dev/null
body() { echo "{\"token\": \"${TOKEN[$1]}\", \"fn\": \"frame.total\", \"n\": 1000}"; }
for t in plain preloaded; do
  out=$(curl -s "$FALRA_URL/v1/call" -d "$(body "$t")")
  [[ $out == *'"result":499500'* ]] || { echo "$t did not answer: $out" >&2; exit 1; }
done
for _ in $(seq 100); do
  curl -s "$FALRA_URL/metrics" | grep -q '^falra_preload_zygotes_alive 1' && break
  sleep 0.2
done
curl -s "$FALRA_URL/metrics" | grep -q '^falra_preload_zygotes_alive 1' \
  || { echo "no preload zygote became ready" >&2; tail -20 "$WORK/falra-preload.log" >&2; exit 1; }

# Sequential calls, each timed by the client over one keep-alive connection; the two tenants in
# turns, so that a drift in the machine's speed favours neither.
/usr/bin/python3 - "$FALRA_URL" "$(body plain)" "$(body preloaded)" "$N" "$RES" <<'PY'
import http.client, json, statistics as st, sys, time, urllib.parse
url, plain, preloaded, n, res = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
def call(body):
    t = time.perf_counter()
    conn.request("POST", "/v1/call", body, {"Content-Type": "application/json"})
    answer = json.loads(conn.getresponse().read())
    assert answer.get("result") == 499500, answer
    return (time.perf_counter() - t) * 1e3
times = {"plain": [], "preloaded": []}
for _ in range(2):  # warm both paths
    call(plain); call(preloaded)
for i in range(n):
    times["plain"].append(call(plain))
    for _ in range(10):
        times["preloaded"].append(call(preloaded))
with open(f"{res}/times.json", "w") as f:
    json.dump(times, f)
for k, v in times.items():
    q = st.quantiles(v, n=10)
    print(f"{k:<10} calls={len(v):>4} p50={st.median(v):8.2f} ms p90={q[-1]:8.2f} ms")
print(f"preload: p50 {st.median(times['plain']) / st.median(times['preloaded']):.1f}x faster than the same call without it")
PY
sleep 1
curl -s "$FALRA_URL/metrics" | grep -E '^falra_preload_' | tee "$RES/metrics.txt"
rss=$(sed -n 's/^falra_preload_zygote_resident_bytes //p' "$RES/metrics.txt")
echo "idle preload zygote (pandas imported): $((rss / 1048576)) MiB resident"
