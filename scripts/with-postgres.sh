#!/usr/bin/env bash
# Runs a command beside a throwaway PostgreSQL cluster: `initdb` and `pg_ctl` in a temporary
# directory, as an unprivileged user (PostgreSQL refuses to run as root), listening on
# 127.0.0.1 on a port of its own. FALRA_TEST_DATABASE_URL names it for the command (tests
# create a database of their own in it); the cluster is stopped and removed afterwards, however
# the command ended. Usage: bash scripts/with-postgres.sh cargo test -p falra-store
set -euo pipefail

pgbin=${PGBIN:-}
if [[ -z $pgbin ]]; then
  initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
  [[ -n $initdb ]] || { echo "no PostgreSQL server binaries (run scripts/install-deps.sh)" >&2; exit 1; }
  pgbin=$(dirname "$initdb")
fi

dir=$(mktemp -d /tmp/falra-pg.XXXXXX)
as_owner=()
if [[ $(id -u) -eq 0 ]]; then
  chown nobody "$dir"
  as_owner=(runuser -u nobody --)
fi
port=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

stop() {
  "${as_owner[@]}" "$pgbin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT

"${as_owner[@]}" "$pgbin/initdb" -D "$dir/data" -U falra --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 \
  || { cat "$dir/initdb.log" >&2; exit 1; }
# Throwaway: no fsync. Enough connections for every test's pool at once.
"${as_owner[@]}" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=400" start >/dev/null \
  || { cat "$dir/server.log" >&2; exit 1; }

export FALRA_TEST_DATABASE_URL="postgres://falra@127.0.0.1:$port/postgres"
echo "PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') for the tests at 127.0.0.1:$port" >&2
"$@"
