# Shared helpers for the benchmark scripts: build falra, start a daemon with one tenant, run wrk.
# Sourced, not run. Needs ROOT and WORK set by the caller.

FALRA=$ROOT/target/release/falra
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

ensure_tools() {
  if ! command -v wrk >/dev/null || ! command -v hyperfine >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk hyperfine >/dev/null
  fi
  cargo build --release -p falra -q
}

# make_repo DIR FILE CONTENT: a git repository with one file on branch main.
make_repo() {
  git init -q -b main "$1"
  printf '%s' "$3" > "$1/$2"
  git -C "$1" add -A
  git -C "$1" -c user.name=bench -c user.email=bench@localhost commit -qm bench
}

# start_daemon NAME PORT [serve args...]: a daemon with its own data dir; sets FALRA_URL and
# FALRA_ADMIN_TOKEN for the tenant helpers below. DAEMON_BIN runs another build of the daemon
# (an earlier commit's, to compare in the same run); the client commands stay this build's.
start_daemon() {
  local name=$1 port=$2; shift 2
  local bin=${DAEMON_BIN:-$FALRA}
  export FALRA_ADMIN_TOKEN
  FALRA_ADMIN_TOKEN=$("$bin" admin init --data-dir "$WORK/$name")
  FALRA_LOG=${FALRA_LOG:-warn} "$bin" serve --data-dir "$WORK/$name" --listen "127.0.0.1:$port" "$@" \
    2> "$WORK/$name.log" &
  PIDS+=($!)
  export FALRA_URL=http://127.0.0.1:$port
  for _ in $(seq 100); do curl -fs "$FALRA_URL/healthz" >/dev/null && return 0; sleep 0.1; done
  echo "daemon $name did not start:" >&2; cat "$WORK/$name.log" >&2; return 1
}

# add_tenant NAME REPO: creates and syncs it, lifts its admission limits out of the way of the
# load generator, prints a call token.
add_tenant() {
  "$FALRA" tenant add "$1" --repo "file://$2" >/dev/null
  "$FALRA" tenant sync "$1" >/dev/null
  "$FALRA" policy set "$1" calls_per_minute=10000000 max_concurrency=10000 >/dev/null
  "$FALRA" token issue "$1" --scopes call --json | sed -n 's/.*"token": "\(flr_[0-9a-f]*\)".*/\1/p'
}

# bench_wrk LABEL CONC DURATION BODY: one wrk run; appends "label c=N FALRA_WRK ..." to $OUT.
bench_wrk() {
  local line
  line=$(WRK_BODY=$4 wrk -t1 -c"$2" -d"$3" --timeout 30s -s "$ROOT/bench/post.lua" "$FALRA_URL/v1/call" \
    | grep '^FALRA_WRK' | sed "s/^/$1 c=$2 /")
  echo "$line" | tee -a "$OUT"
  # A figure with failed requests in it measures the failures, not the calls.
  if [[ $line != *" errors=0 "* ]]; then echo "bench: $1 c=$2 had failed requests" >&2; exit 1; fi
}

# etl_job TOKEN ZIP_URL WRITER_STEP: the seed's ETL call (rename → melt → clone) ending in
# WRITER_STEP, a JSON object.
etl_job() {
  cat <<JSON
{"token": "$1", "fn": "read_zip_csv_chunk.read_zip_csv_chunk",
 "zip_url": "$2",
 "lst_fn": [
  {"fn": "cameo_df.rename_col", "dic_mapping": {"PM2_5(mg/m3)": "pm2_5", "HUMIDITY(%)": "humidity"}},
  {"fn": "cameo_df.horizontal_to_vertical",
   "lst_horizontal_col": ["TVOCSA()", "PM2_5(mg/m3)", "PM10(mg/m3)", "TEMPERATURE(℃)", "HUMIDITY(%)",
                          "WIND_SPEED(m/sec)", "VOC()", "WIND_DIRECT(degrees)"],
   "vertical_col": "sensorId"},
  {"fn": "cameo_df.clone_col", "dic_mapping": {"TIME": "createTime"}},
  $3
 ]}
JSON
}
