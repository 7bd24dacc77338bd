#!/usr/bin/env bash
# Installs the `uv` that virtualenv builds use, from its PyPI wheel, pinned by version and by
# the wheel's SHA-256, at /usr/local/lib/falra/uv-<version>/uv (the daemon's default `--uv`).
# Skips what is there. Without it the daemon builds with pip, under the same rules.
set -euo pipefail

version=0.13.9
wheel=uv-${version}-py3-none-manylinux_2_17_x86_64.manylinux2014_x86_64.whl
sha256=d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19
dest=${FALRA_UV_DIR:-/usr/local/lib/falra/uv-$version}

if [[ -x "$dest/uv" ]] && "$dest/uv" --version 2>/dev/null | grep -q "^uv $version"; then
  exit 0
fi
if [[ $(uname -m) != x86_64 ]]; then
  echo "install-uv: only the x86_64 wheel is pinned here; builds will use pip" >&2
  exit 0
fi
echo "installing uv $version into $dest" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
/usr/bin/python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary :all: \
  --dest "$tmp" "uv==$version"
[[ -f "$tmp/$wheel" ]] || { echo "install-uv: pip did not fetch $wheel" >&2; exit 1; }
echo "$sha256  $tmp/$wheel" | sha256sum -c --quiet - \
  || { echo "install-uv: $wheel does not match its pinned SHA-256" >&2; exit 1; }
/usr/bin/python3 - "$tmp/$wheel" "$tmp/out" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    name = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
    with z.open(name) as src, open(sys.argv[2], "wb") as out:
        out.write(src.read())
PY
mkdir -p "$dest"
install -m 0755 "$tmp/out" "$dest/uv"
"$dest/uv" --version
