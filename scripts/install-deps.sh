#!/usr/bin/env bash
# Installs what building and testing Falra needs on a Debian machine, skipping what is there:
# git (the tests make real repositories), pkg-config and OpenSSL headers (git2's https),
# libseccomp (the sandbox compiles its seccomp policy with it),
# CPython 3 at /usr/bin/python3 (the interpreter calls run in) with pip (virtualenv builds from
# a tenant's requirements.txt), git's http-backend (the tests serve a repository over HTTP),
# PostgreSQL's server binaries (the store's and the cluster's tests run against a real one),
# HAProxy (the load-balancer example in deploy/ is run by the cluster tests), and iproute2 and
# nsenter (the multi-host tests put each node in a network namespace of its own).
set -euo pipefail

need=()
command -v git >/dev/null 2>&1 || need+=(git)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
dpkg -s libseccomp-dev >/dev/null 2>&1 || need+=(libseccomp-dev)
command -v cc >/dev/null 2>&1 || need+=(gcc)
[[ -x /usr/bin/python3 ]] || need+=(python3)
/usr/bin/python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
/usr/bin/python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
[[ -x /usr/lib/git-core/git-http-backend ]] || need+=(git)
# PostgreSQL's server binaries (initdb, pg_ctl, psql): the tests start a throwaway cluster.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v runuser >/dev/null 2>&1 || need+=(util-linux)
command -v nsenter >/dev/null 2>&1 || need+=(util-linux)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || need+=(haproxy)

if ((${#need[@]})); then
  echo "installing: ${need[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

for tool in cargo rustfmt cargo-clippy; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing Rust tool: $tool (install with rustup)" >&2; exit 1; }
done
