"""A PEP 503 package index of a directory of wheels, with PEP 658 metadata files (as PyPI
serves them): `simple/<name>/index.html` links each wheel with its SHA-256 and its metadata's.
Usage: python3 bench/simple_index.py WHEELS_DIR OUT_DIR
       python3 bench/simple_index.py --serve OUT_DIR PORT   (on 127.0.0.1; a listen backlog
       of 128, as a real index has: http.server's 5 drops the SYNs of a resolver's parallel
       requests, which then wait a second for the retransmission)."""

import hashlib
import html
import os
import re
import shutil
import sys
import zipfile


def normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def main(wheels, out):
    files = os.path.join(out, "files")
    os.makedirs(files, exist_ok=True)
    projects = {}
    for name in sorted(os.listdir(wheels)):
        if not name.endswith(".whl"):
            continue
        src = os.path.join(wheels, name)
        dest = os.path.join(files, name)
        if not os.path.exists(dest):
            try:
                os.link(src, dest)
            except OSError:
                shutil.copy(src, dest)
        with open(src, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        with zipfile.ZipFile(src) as z:
            meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
            metadata = z.read(meta_name)
        with open(dest + ".metadata", "wb") as f:
            f.write(metadata)
        meta_digest = hashlib.sha256(metadata).hexdigest()
        projects.setdefault(normalize(name.split("-")[0]), []).append((name, digest, meta_digest))
    simple = os.path.join(out, "simple")
    for project, entries in projects.items():
        os.makedirs(os.path.join(simple, project), exist_ok=True)
        links = "".join(
            '<a href="../../files/%s#sha256=%s" data-dist-info-metadata="sha256=%s" '
            'data-core-metadata="sha256=%s">%s</a>\n'
            % (html.escape(n), d, m, m, html.escape(n))
            for n, d, m in entries
        )
        with open(os.path.join(simple, project, "index.html"), "w") as f:
            f.write("<!DOCTYPE html>\n<html><body>\n%s</body></html>\n" % links)
    with open(os.path.join(simple, "index.html"), "w") as f:
        f.write(
            "<!DOCTYPE html>\n<html><body>\n%s</body></html>\n"
            % "".join('<a href="%s/">%s</a>\n' % (p, p) for p in sorted(projects))
        )


def serve(root, port):
    import functools
    import http.server

    class Server(http.server.ThreadingHTTPServer):
        request_queue_size = 128

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=root)
    Server(("127.0.0.1", int(port)), handler).serve_forever()


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2])
