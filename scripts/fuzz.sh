#!/usr/bin/env bash
# Fuzzes the ETL's streaming zip reader (fuzz/fuzz_targets/zipstream.rs) with cargo-fuzz on the
# nightly toolchain, for FUZZ_SECONDS (default 60), from seed archives made here: deflated and
# stored members, with and without data descriptors, zip64, an empty archive. A crash fails the
# run and leaves its input in fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
corpus=fuzz/corpus/zipstream
mkdir -p "$corpus"
/usr/bin/python3 - "$corpus" <<'PY'
import io, os, sys, zipfile
out = sys.argv[1]

class Unseekable(io.RawIOBase):
    """A sink zipfile cannot seek back into: it writes data descriptors."""
    def __init__(self): self.b = io.BytesIO()
    def writable(self): return True
    def write(self, d): return self.b.write(d)
    def tell(self): return self.b.tell()

def save(name, build, unseekable=False):
    sink = Unseekable() if unseekable else io.BytesIO()
    with zipfile.ZipFile(sink, "w") as z:
        build(z)
    data = sink.b.getvalue() if unseekable else sink.getvalue()
    open(os.path.join(out, name), "wb").write(data)

csv = b"deviceId,TIME,PM2_5\n" + b"7478000001,2019-12-01 00:00:00,12.5\n" * 40
def plain(z):
    z.writestr("a.csv", csv, zipfile.ZIP_DEFLATED)
    z.writestr("readme.txt", b"hello", zipfile.ZIP_STORED)
def streamed(z):
    with z.open("b.csv", "w") as f: f.write(csv)
    with z.open("c.txt", "w") as f: f.write(b"x" * 100)
def forced64(z):
    with z.open("big.csv", "w", force_zip64=True) as f: f.write(csv)
save("plain.zip", plain)
save("descriptors.zip", streamed, unseekable=True)
save("zip64.zip", forced64, unseekable=True)
save("empty.zip", lambda z: None)
PY
export PATH=$(pwd)/target/tools/bin:$PATH
echo "fuzzing the zip reader for ${seconds}s"
cargo +nightly fuzz run --fuzz-dir fuzz --target-dir target/fuzz zipstream "$corpus" -- \
  -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 2>&1 | tail -n 15
