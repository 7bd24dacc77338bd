# The Falra runner: runs one call in a fresh process, then exits.
#
# Compiled once by the daemon and run as `python3 -I -S -B runner.pyc` with the tenant's code as
# working directory, or forked per call from the zygote (`runner.pyc --zygote FD`, see
# `_zygote` below), which runs the same `_main` in each forked child once it is sandboxed.
# Reads {"protocol": 1, "call_id", "fn", "kwargs"} on stdin, writes exactly one JSON line on the
# answer channel (the original stdout), exits 0. Kept lean on purpose: on the success path it
# imports only modules that are built in or C extensions (`posix`, `sys`, `_json`), because
# everything imported here is paid again on every single call.
import posix
import sys
import _json

_ROOT = _PREFIX = _VENV = ""
_PREFIXES = ()
_MISSING = object()


def _find_code():
    """Where the tenant's code and virtualenv are: read when the call starts (in a forked child
    the working directory and environment are the call's only after its setup)."""
    global _ROOT, _PREFIX, _VENV, _PREFIXES
    _ROOT = posix.getcwd()
    _PREFIX = _ROOT.rstrip("/") + "/"
    # The tenant's virtualenv (packages from its requirements.txt), when it has one.
    _VENV = posix.environ.get(b"FALRA_VENV", b"").decode()
    _PREFIXES = (_PREFIX, _VENV.rstrip("/") + "/") if _VENV else (_PREFIX,)


class _Refused(Exception):
    """A failure that is not the function's own: carries the protocol's code and detail."""

    def __init__(self, code, message, detail):
        Exception.__init__(self, message)
        self.code = code
        self.detail = detail


def _no_constants(name):
    raise ValueError("non-standard JSON constant " + name)


class _Decoder:
    # The attributes _json.make_scanner reads: standard JSON, nothing more.
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = staticmethod(_no_constants)
    memo = {}


_scan = _json.make_scanner(_Decoder)


def _decode(data):
    text = data.decode("utf-8").strip()
    value, end = _scan(text, 0)
    if end != len(text):
        raise ValueError("trailing data after the request")
    return value


def _unserializable(value, where):
    raise _Refused(
        "result_not_serializable",
        "result of type %s at %s cannot be converted to JSON" % (type(value).__name__, where),
        {"type": type(value).__name__, "path": where},
    )


def _clean(value, where):
    """The result as plain JSON types, converting what the contract converts."""
    t = type(value)
    if value is None or t is bool or t is int or t is str:
        return value
    if t is float:
        # NaN and the infinities have no JSON form: they become null.
        return value if value - value == 0.0 else None
    if t is list or t is tuple:
        return [_clean(v, "%s[%d]" % (where, i)) for i, v in enumerate(value)]
    if t is dict:
        out = {}
        for k, v in value.items():
            kt = type(k)
            if kt is str:
                key = k
            elif k is None or kt is bool:
                key = _KEYS[k]
            elif kt is int or kt is float:
                key = repr(k)
            else:
                _unserializable(k, where + " (a key)")
            out[key] = _clean(v, "%s[%r]" % (where, key))
        return out
    if t is set or t is frozenset:
        return [_clean(v, "%s{%d}" % (where, i)) for i, v in enumerate(value)]
    module = getattr(t, "__module__", "")
    if module == "datetime" and hasattr(value, "isoformat"):
        return value.isoformat()
    if module == "numpy" and hasattr(value, "tolist"):
        return _clean(value.tolist(), where)
    # Subclasses of the plain types (IntEnum, str subclasses, OrderedDict, …) as their base.
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return _clean(base(value), where)
    if isinstance(value, dict):
        return _clean(dict(value), where)
    if isinstance(value, (list, tuple)):
        return _clean(list(value), where)
    _unserializable(value, where)


_KEYS = {None: "null", True: "true", False: "false"}

_encode = _json.make_encoder(
    None, None, _json.encode_basestring, None, ":", ",", False, False, False
)


def _resolve(fn):
    modname, _, funcname = fn.rpartition(".")
    try:
        __import__(modname)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing == modname or modname.startswith(missing + "."):
            raise _Refused(
                "fn_not_found", "no module named %r in this tenant's code" % modname,
                {"module": modname},
            ) from None
        raise
    module = sys.modules[modname]
    origin = getattr(module, "__file__", None) or ""
    if not origin.startswith(_PREFIXES):
        raise _Refused(
            "fn_not_found", "no module named %r in this tenant's code" % modname,
            {"module": modname},
        )
    func = getattr(module, funcname, _MISSING)
    if func is _MISSING:
        raise _Refused(
            "fn_not_found", "module %r has no function %r" % (modname, funcname),
            {"module": modname, "function": funcname},
        )
    if isinstance(func, type):
        raise _Refused(
            "fn_not_found", "%s is a class, not a function" % fn,
            {"module": modname, "function": funcname},
        )
    if not callable(func):
        raise _Refused(
            "fn_not_found", "%s is not callable" % fn,
            {"module": modname, "function": funcname},
        )
    return func


def _tenant_traceback(exc):
    import traceback

    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(_PREFIX)
    ]
    lines = ["Traceback (most recent call last):\n"] if frames else []
    lines += traceback.format_list(frames)
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


def _error(exc):
    if isinstance(exc, _Refused):
        err = {"type": type(exc).__name__, "message": str(exc), "traceback": "",
               "code": exc.code, "detail": exc.detail}
    else:
        try:
            tb = _tenant_traceback(exc)
        except BaseException:
            tb = ""
        try:
            message = str(exc)
        except BaseException:
            message = "<unprintable %s>" % type(exc).__name__
        err = {"type": type(exc).__name__, "message": message, "traceback": tb}
    return {"ok": False, "error": err}


def _introspect():
    """The version's modules and their public functions: signature and first docstring line.

    Runs at deploy time only, in a sandboxed child like any call. Each module is looked at in
    a forked process of its own, so one that exits, hangs or poisons the interpreter at import
    time spoils only its own entry: compiled first (a syntax error is reported with its line),
    then imported; a module that fails is listed with the exception instead of its functions.
    """
    import signal

    modules = []
    for name, path in _module_files():
        read_end, write_end = posix.pipe()
        pid = posix.fork()
        if pid == 0:
            posix.close(read_end)
            signal.alarm(_MODULE_SECONDS)
            entry = _inspect_module(name, path)
            data = "".join(_encode(entry, 0)).encode("utf-8")
            while data:
                data = data[posix.write(write_end, data):]
            posix._exit(0)
        posix.close(write_end)
        data = _read_all(read_end)
        posix.close(read_end)
        _, status = posix.waitpid(pid, 0)
        try:
            entry = _decode(data)
        except BaseException:
            if posix.WIFSIGNALED(status) and posix.WTERMSIG(status) == signal.SIGALRM:
                entry = {"module": name, "error": {
                    "type": "ImportTimeout",
                    "message": "importing the module took longer than %d s, the import time "
                               "limit (work at import time belongs in a function)"
                               % _MODULE_SECONDS,
                }}
                modules.append(entry)
                continue
            if posix.WIFSIGNALED(status):
                how = "was killed by signal %d" % posix.WTERMSIG(status)
            else:
                how = "exited with status %d" % posix.WEXITSTATUS(status)
            entry = {"module": name, "error": {
                "type": "ImportAborted",
                "message": "importing the module ended its process: it " + how,
            }}
        modules.append(entry)
    return {"modules": modules}


def _compile(out):
    """Bytecode for every module of the code root, written under `out` as the interpreter
    would cache it beside the source (`<dir>/__pycache__/<name>.<tag>.pyc`), for the daemon to
    lay into the version's read-only tree: no call then compiles a module again.

    Runs at deploy time in a sandboxed child like any call, and runs no tenant code: the code
    root is not on `sys.path` in this mode, nothing is imported, and sources are compiled with
    the built-in `compile`, never executed. A module that does not compile is skipped (the
    listing reports it); one already cached in the tree is left as it is.
    """
    import marshal

    tag = sys.implementation.cache_tag
    magic = sys.modules["_frozen_importlib_external"].MAGIC_NUMBER
    compiled = 0
    for _, path in _module_files(limit=10000, private=True):
        head, _, name = path[len(_PREFIX):].rpartition("/")
        cache_dir = (head + "/" if head else "") + "__pycache__"
        cached = cache_dir + "/" + name[:-3] + "." + tag + ".pyc"
        try:
            posix.stat(_PREFIX + cached)
            continue
        except OSError:
            pass
        try:
            st = posix.stat(path)
            fd = posix.open(path, posix.O_RDONLY)
            try:
                source = _read_all(fd)
            finally:
                posix.close(fd)
            code = compile(source, path, "exec", dont_inherit=True)
            # A timestamp-checked cache entry, as the importer writes one (PEP 552, flags 0).
            data = b"".join([
                magic, b"\0\0\0\0",
                (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little"),
                (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"),
                marshal.dumps(code),
            ])
            _write_new(out, cache_dir, cached, data)
            compiled += 1
        except BaseException:
            pass
    return {"compiled": compiled}


def _write_new(out, cache_dir, cached, data):
    """Writes `data` to `out/cached`, making the directories of `cache_dir` under `out`."""
    at = out
    for part in cache_dir.split("/"):
        at += "/" + part
        try:
            posix.mkdir(at, 0o755)
        except FileExistsError:
            pass
    fd = posix.open(out + "/" + cached, posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL, 0o644)
    try:
        while data:
            data = data[posix.write(fd, data):]
    finally:
        posix.close(fd)


# How long one module's import and listing may take.
_MODULE_SECONDS = 10


def _inspect_module(name, path):
    import inspect

    entry = {"module": name}
    try:
        with open(path, "rb") as f:
            compile(f.read(), path, "exec", dont_inherit=True)
    except SyntaxError as e:
        entry["error"] = {"type": type(e).__name__, "message": str(e.msg), "line": e.lineno,
                          "stage": "compile"}
        return entry
    except BaseException as e:
        entry["error"] = {"type": type(e).__name__, "message": _short(e), "stage": "compile"}
        return entry
    try:
        __import__(name)
        module = sys.modules[name]
    except BaseException as e:
        entry["error"] = {"type": type(e).__name__, "message": _short(e)}
        return entry
    functions = []
    for attr, obj in list(vars(module).items()):
        try:
            if attr.startswith("_") or isinstance(obj, type) or not callable(obj):
                continue
            if getattr(obj, "__module__", None) != name:
                continue  # imported from elsewhere: listed where it is defined
        except BaseException:
            continue
        try:
            signature = str(inspect.signature(obj))
        except BaseException:
            signature = "(...)"
        try:
            doc = (inspect.getdoc(obj) or "").strip()
        except BaseException:
            doc = ""
        functions.append({
            "name": name + "." + attr,
            "signature": signature,
            "doc": doc.splitlines()[0] if doc else "",
        })
    entry["functions"] = functions
    return entry


def _short(exc):
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable>"
    return text[:500]


def _module_files(limit=2000, private=False):
    """(dotted name, path) of every callable module in the code root, in sorted order; with
    `private`, also the modules and packages whose names start with `_` (importable, not
    callable)."""
    found = []
    pending = [(_ROOT, ())]
    while pending and len(found) < limit:
        directory, parts = pending.pop()
        try:
            names = sorted(posix.listdir(directory))
        except OSError:
            continue
        for entry in names:
            path = directory + "/" + entry
            try:
                st = posix.lstat(path)
            except OSError:
                continue
            kind = st.st_mode & 0o170000
            if kind == 0o040000 and entry.isidentifier() and entry != "__pycache__" and (
                private or not entry.startswith("_")
            ):
                pending.append((path, parts + (entry,)))
            elif kind == 0o100000 and entry.endswith(".py"):
                stem = entry[:-3]
                if stem == "__init__" and parts:
                    found.append((".".join(parts), path))
                elif stem.isidentifier() and (private or not stem.startswith("_")):
                    found.append((".".join(parts + (stem,)), path))
    found.sort()
    return found[:limit]


_ANSWER_FD = -1


def progress(fraction, message=""):
    """Reports how far the call has got: `fraction` from 0 to 1, an optional short message.

    Importable by tenant code as `falra.progress`; a background job shows the latest report.
    Written as a record on the answer channel (a line that begins with the byte 0x1e), which
    the daemon takes out before it reads the answer.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError("progress fraction must be a number from 0 to 1")
    fraction = float(fraction)
    if not fraction == fraction:
        raise ValueError("progress fraction must be a number from 0 to 1")
    fraction = min(1.0, max(0.0, fraction))
    if type(message) is not str:
        message = str(message)
    record = {"fraction": fraction, "message": message[:200]}
    data = b"\x1e" + "".join(_encode(record, 0)).encode("utf-8", "replace") + b"\n"
    while data:
        data = data[posix.write(_ANSWER_FD, data):]


def _install_module():
    """The `falra` module tenant code may import (it shadows a tenant module of that name)."""
    module = type(sys)("falra")
    module.progress = progress
    module.__doc__ = "What the Falra runner gives a function: progress(fraction, message)."
    sys.modules["falra"] = module


# The byte that begins a line written through `sys.stderr` in the logs; the daemon takes it out
# and marks the line as stderr's (`falra_sandbox::logs`). Everything else is stdout's.
_STDERR_MARK = b"\x02"


class _LogBytes:
    """The bytes side of a call's `sys.stdout` or `sys.stderr` (its `.buffer`)."""

    def __init__(self, log):
        self._log = log

    def write(self, data):
        data = bytes(data)
        self._log._put(data)
        return len(data)

    def flush(self):
        pass


class _Log:
    """A call's `sys.stdout` or `sys.stderr`: every write goes straight to the logs (descriptor
    2, where descriptor 1 points too), nothing is held in a buffer, so the logs keep the order
    things were written in and a call stopped at its deadline keeps what it printed."""

    encoding = "utf-8"
    errors = "backslashreplace"
    closed = False
    line_buffering = True
    write_through = True
    mode = "w"
    newlines = None

    def __init__(self, fd, mark):
        self.name = "<stdout>" if fd == 1 else "<stderr>"
        self._fd = fd
        self._mark = mark
        self._at_start = True
        self.buffer = _LogBytes(self)

    def _put(self, data):
        if self._mark:
            out = []
            start = self._at_start
            for i, piece in enumerate(data.split(b"\n")):
                if i:
                    out.append(b"\n")
                    start = True
                if piece:
                    if start:
                        out.append(self._mark)
                    out.append(piece)
                    start = False
            self._at_start = start
            data = b"".join(out)
        while data:
            data = data[posix.write(2, data):]

    def write(self, text):
        if type(text) is not str:
            if not isinstance(text, str):
                raise TypeError("write() argument must be str, not " + type(text).__name__)
            text = str.__str__(text)
        self._put(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def reconfigure(self, **_):
        pass


def _main():
    global _ANSWER_FD
    _find_code()
    answer_fd = posix.dup(1)  # the answer channel, kept from tenant code (not inherited)
    _ANSWER_FD = answer_fd
    posix.dup2(2, 1)  # from here on, print() and fd 1 go to the logs
    sys.stdout = _Log(1, b"")
    sys.stderr = _Log(2, _STDERR_MARK)
    _install_module()
    try:
        request = _decode(_read_all(0))
        if request.get("mode") != "compile":
            sys.path.insert(0, _ROOT)
            if _VENV:
                sys.path.append(_VENV)
        if request.get("mode") == "introspect":
            _add_environment(request.get("env") or ())
            result = _introspect()
        elif request.get("mode") == "compile":
            result = _compile(request["out"])
        else:
            _add_environment(request.get("env") or ())
            func = _resolve(request["fn"])
            result = func(**request["kwargs"])
        try:
            payload = {"ok": True, "result": _clean(result, "result")}
        except RecursionError:
            raise _Refused(
                "result_not_serializable", "the result refers to itself or is nested too deeply",
                {"type": type(result).__name__, "path": "result"},
            ) from None
    except BaseException as e:  # SystemExit and KeyboardInterrupt are the function's too
        payload = _error(e)
    try:
        text = "".join(_encode(payload, 0))
        data = text.encode("utf-8")
    except BaseException as e:
        refused = _Refused(
            "result_not_serializable", "the result cannot be encoded as UTF-8 JSON",
            {"type": type(e).__name__, "path": "result"},
        )
        data = "".join(_encode(_error(refused), 0)).encode("utf-8")
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    data += b"\n"
    try:
        while data:
            data = data[posix.write(answer_fd, data):]
    finally:
        posix._exit(0)


def _add_environment(pairs):
    """The tenant's environment variables (validated by the daemon), for the function and
    whatever it starts; set before its module is imported."""
    os = sys.modules.get("os")
    for key, value in pairs:
        posix.putenv(key, value)
        posix.environ[key.encode()] = value.encode()
        if os is not None:
            os.environ._data[key.encode()] = value.encode()


def _read_all(fd):
    chunks = []
    while True:
        chunk = posix.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


# --- The zygote -------------------------------------------------------------------------------
#
# A warm interpreter that has loaded this runner and the standard-library modules the per-call
# setup needs, and no tenant code. The daemon starts it as root, in its own namespaces, and
# speaks to it over one SOCK_SEQPACKET socket only it holds. For each call the daemon has
# already cloned the call's init into fresh PID, mount, IPC, UTS and network namespaces and
# built the call's root there (the Rust setup, unchanged); it then sends the zygote a request
# with the call's pipes and a pidfd of that init. The zygote enters init's PID namespace for its
# next child only (`setns` on a PID namespace moves no running process), forks, and goes back to
# its own. The fork, still this trusted code and now a member of the call's PID namespace, joins
# the call's cgroups, enters init's other namespaces (cgroup namespace included) through the
# pidfd, then takes, in this order, a session of its own, the call's stdio, working
# directory and resource limits, closes every other descriptor, drops to the tenant's uid and
# gid (every capability goes with root), becomes not dumpable, sets no_new_privs, restricts
# itself with Landlock and installs the seccomp filters. It then forks the call's process and
# exits, so that the call's process is init's child, as an exec'd program is: init reaps it and
# reports its end, and killing its parent kills nothing. Only the call's process runs `_main`,
# which imports the tenant's module. The daemon decides every value (the steps come from the
# same plan init ran); this code only carries them out, and runs nothing a tenant supplied.

# Where a forked child's setup failed, reported as (step, errno) on the call's report pipe; the
# daemon names them (`falra_sandbox::zygote::STEP_NAMES`).
_Z_CGROUP, _Z_NAMESPACES, _Z_FORK, _Z_SESSION, _Z_STDIO, _Z_CHDIR, _Z_RLIMIT = range(7)
_Z_FDS, _Z_IDENTITY, _Z_DUMPABLE, _Z_NO_NEW_PRIVS, _Z_LANDLOCK, _Z_SECCOMP, _Z_ENV = range(7, 14)
_Z_BASE = 0x1000
_Z_STARTED = 0xFFFFFFFE
_CLONE_NEWPID = 0x20000000


def _report(fd, step, errno):
    record = step.to_bytes(4, sys.byteorder) + errno.to_bytes(4, sys.byteorder, signed=True)
    try:
        posix.write(fd, record)
    except OSError:
        pass


def _zygote(sock_fd):
    import ctypes
    import _socket
    import resource
    import select
    import signal

    posix.setsid()  # no terminal's signals, whatever the daemon's session gets
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, sock_fd)
    hello = _decode(sock.recv(1 << 22))
    nr = hello["nr"]

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    class _PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    filters = []
    for program in hello["seccomp"]:
        raw = bytes.fromhex(program)
        buf = ctypes.create_string_buffer(raw, len(raw))
        filters.append((_Fprog(len(raw) // 8, ctypes.cast(buf, ctypes.c_void_p)), buf))
    own_pid_ns = posix.open("/proc/self/ns/pid", posix.O_RDONLY | posix.O_CLOEXEC)
    # SIGCHLD wakes the loop below through a pipe (the handler itself does nothing), so that
    # each first fork is reaped as it exits.
    wake_r, wake_w = posix.pipe2(posix.O_NONBLOCK | posix.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    ctx = (libc, nr, filters, resource, ctypes, signal, _PathBeneath)
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    fds_space = _socket.CMSG_SPACE(8 * 4)
    # Everything loaded so far is the zygote's for good: the collector leaves it alone, so a
    # forked call does not write to (and so copy) the pages it shares with the zygote.
    gc = __import__("gc")
    gc.collect()
    gc.freeze()
    sock.send(b"ready")
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        # Drained before reaping, never after: a SIGCHLD that comes once the reaping is done
        # leaves its byte for the next poll. (Drained after, a first fork that exited in
        # between would stay unreaped, and its call's init, which cannot finish exiting until
        # it is, would wait for the next request.)
        _drain(wake_r)
        _reap()
        if not any(fd == sock.fileno() for fd, _ in ready):
            continue
        received = _receive(sock, 1 << 20, fds_space, _socket)
        if received is None:
            continue
        msg, fds = received
        pid = -1
        if len(fds) == 5:
            try:
                request = _decode(msg)
                if libc.setns(fds[4], _CLONE_NEWPID) == 0:
                    try:
                        pid = posix.fork()
                    finally:
                        if pid != 0 and libc.setns(own_pid_ns, _CLONE_NEWPID) != 0:
                            posix._exit(1)  # cannot fork into our own namespace again
            except BaseException:
                pid = -1
            if pid == 0:
                sock.detach()
                _zygote_fork(request, fds, ctx)
        for fd in fds:
            posix.close(fd)
        sock.send(b"1" if pid > 0 else b"0")


def _receive(sock, size, fds_space, _socket):
    """One request from the daemon and the descriptors passed with it; `None` to try again.
    Exits when the daemon is gone."""
    try:
        msg, ancillary, _, _ = sock.recvmsg(size, fds_space)
    except (InterruptedError, BlockingIOError):
        return None
    except OSError:
        posix._exit(0)
    if not msg:
        posix._exit(0)  # the daemon is gone
    fds = []
    for level, kind, data in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, usable, 4)]
    return msg, fds


def _drain(fd):
    try:
        while posix.read(fd, 256):
            pass
    except OSError:
        pass


def _reap():
    while True:
        try:
            pid, _ = posix.waitpid(-1, posix.WNOHANG)
        except ChildProcessError:
            return
        except InterruptedError:
            continue
        if pid == 0:
            return


def _zygote_fork(request, fds, ctx):
    """The first fork: sandbox itself in the order of the plan, fork the call's process, exit."""
    libc, nr, filters, resource, ctypes, signal, path_beneath = ctx
    stdin, stdout, stderr, report, pidfd = fds
    step = _Z_CGROUP
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for procs in request["cgroups"]:
            fd = posix.open(procs, posix.O_WRONLY | posix.O_CLOEXEC)
            try:
                posix.write(fd, b"0")
            finally:
                posix.close(fd)
        step = _Z_NAMESPACES
        if libc.setns(pidfd, request["ns"]) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        step = _Z_SESSION
        posix.setsid()
        step = _Z_STDIO
        for fd, to in ((stdin, 0), (stdout, 1), (stderr, 2), (report, 3)):
            posix.dup2(fd, to)
        report = 3
        step = _Z_CHDIR
        posix.chdir(request["cwd"])
        step = _Z_RLIMIT
        for which, value in request["rlimits"]:
            value = resource.RLIM_INFINITY if value >= 1 << 63 else value
            resource.setrlimit(which, (value, value))
        step = _Z_FDS
        posix.closerange(4, 1 << 30)
        step = _Z_IDENTITY
        uid, gid = request["uid"], request["gid"]
        posix.setgroups([])
        posix.setresgid(gid, gid, gid)
        posix.setresuid(uid, uid, uid)
        if posix.getresuid() != (uid, uid, uid) or posix.getresgid() != (gid, gid, gid):
            raise OSError(1, "identity not dropped")
        step = _Z_DUMPABLE
        _check(libc.prctl(4, ctypes.c_ulong(0)), ctypes)  # PR_SET_DUMPABLE
        step = _Z_NO_NEW_PRIVS
        zero = ctypes.c_ulong(0)
        _check(libc.prctl(38, ctypes.c_ulong(1), zero, zero, zero), ctypes)  # PR_SET_NO_NEW_PRIVS
        step = _Z_LANDLOCK
        landlock = request.get("landlock")
        if landlock:
            _landlock(libc, nr, ctypes, landlock, path_beneath)
        step = _Z_SECCOMP
        if request["seccomp"]:
            for prog, _ in filters:
                rc = libc.syscall(ctypes.c_long(nr["seccomp"]), ctypes.c_ulong(1),
                                  ctypes.c_ulong(0), ctypes.byref(prog))
                _check(rc, ctypes)
        step = _Z_ENV
        _set_environment(request["env"])
        # What an exec'd interpreter would say it runs (the zygote's are relative names).
        sys.argv = [request["argv0"]]
        sys.orig_argv = request["orig_argv"]
        sys.modules["__main__"].__file__ = request["argv0"]
        step = _Z_FORK
        # Closed only as this process exits: the call's process waits for that end-of-file.
        gone_r, gone_w = posix.pipe()
        pid = posix.fork()
    except BaseException as e:
        _report(report, _Z_BASE + step, getattr(e, "errno", None) or 5)
        posix._exit(126)
    if pid == 0:
        posix.close(report)
        posix.close(gone_w)
        # Run only once this process's parent is init, as an exec'd interpreter's is: wait for
        # the first fork to exit, then for the kernel to finish reparenting (a few
        # microseconds after its descriptors are closed).
        while True:
            try:
                posix.read(gone_r, 1)
                break
            except InterruptedError:
                continue
        posix.close(gone_r)
        for _ in range(100000):
            if posix.getppid() == 1:
                break
            posix.sched_yield()
        # Dumpable again, as an exec'd interpreter is (execve resets the flag): only the first
        # fork, which passed through root, needed not to be.
        libc.prctl(4, ctypes.c_ulong(1))
        _main()
    # The call's process becomes init's child as this one exits.
    _report(report, _Z_STARTED, 0)
    posix._exit(0)


def _check(rc, ctypes):
    if rc < 0:
        raise OSError(ctypes.get_errno() or 5, "system call failed")


def _landlock(libc, nr, ctypes, landlock, path_beneath):
    handled = ctypes.c_uint64(landlock["handled"])
    _restrict(libc, nr, ctypes, ctypes.byref(handled), 8, landlock["rules"], path_beneath, 0)


def _restrict(libc, nr, ctypes, attr, size, rules, path_beneath, open_flags):
    """A Landlock ruleset from `attr` with `rules` (path, rights), applied to this process.
    A path this root does not have (or, with O_DIRECTORY, that is not a directory) needs none."""
    long = ctypes.c_long
    ruleset = libc.syscall(long(nr["landlock_create_ruleset"]), attr, ctypes.c_size_t(size),
                           ctypes.c_ulong(0))
    _check(ruleset, ctypes)
    try:
        for path, rights in rules:
            try:
                fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC | open_flags)
            except OSError:
                continue
            try:
                beneath = path_beneath(rights, fd)
                _check(libc.syscall(long(nr["landlock_add_rule"]), long(ruleset),
                                    ctypes.c_ulong(1), ctypes.byref(beneath), ctypes.c_ulong(0)),
                       ctypes)
            finally:
                posix.close(fd)
        _check(libc.syscall(long(nr["landlock_restrict_self"]), long(ruleset),
                            ctypes.c_ulong(0)), ctypes)
    finally:
        posix.close(ruleset)


def _set_environment(pairs):
    """The call's whole environment, as an exec'd child would have it from the daemon."""
    for key in list(posix.environ):
        posix.unsetenv(key)
    posix.environ.clear()
    for key, value in pairs:
        posix.putenv(key, value)
        posix.environ[key.encode()] = value.encode()
    os = sys.modules.get("os")
    if os is not None:
        os.environ._data.clear()
        os.environ._data.update((k.encode(), v.encode()) for k, v in pairs)


# --- Preload zygotes ------------------------------------------------------------------------
#
# A tenant version's zygote (`runner.pyc --preload`, see `falra_sandbox::preload`): started as
# a sandboxed child like any call's (its stdin is its socket to the daemon), it imports the
# modules the tenant's policy names, then forks one process per call. Tenant code has run here,
# so nothing below is trusted by the daemon: each call's process restricts itself further
# (Landlock, seccomp) before it runs the call, the daemon checks who it is with the kernel, and
# its limits and usage are the call's cgroup's.

# The native thread pools numpy, pandas and their kin start at import: one thread each, so that
# the zygote is one thread when it forks (a fork copies only the forking thread).
_ONE_THREAD = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


def _preload():
    import _socket
    import ctypes
    import select
    import signal

    _find_code()
    chan = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, posix.dup(0))
    # What the imports print is nobody's call's: it goes nowhere.
    null = posix.open("/dev/null", posix.O_RDWR)
    for fd in (0, 1, 2):
        posix.dup2(null, fd)
    posix.close(null)
    hello = _decode(chan.recv(1 << 22))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    class _PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    raw = bytes.fromhex(hello["seccomp"])
    buf = ctypes.create_string_buffer(raw, len(raw))
    prog = _Fprog(len(raw) // 8, ctypes.cast(buf, ctypes.c_void_p))
    # The top of the root as the zygote sees it, but /tmp: each call reads only its own part.
    top = sorted(n for n in posix.listdir("/") if n not in ("tmp", "dev") and _is_dir("/" + n))
    # The device nodes one by one, so that /dev/shm (and anything made there at import) is
    # not a place calls of this zygote can leave things for each other.
    devices = sorted("/dev/" + e.name for e in posix.scandir("/dev")
                     if not e.is_dir(follow_symlinks=False)
                     and not e.is_symlink())
    for name in _ONE_THREAD:
        posix.putenv(name, "1")
        posix.environ[name.encode()] = b"1"
    # The interpreter's own functions, taken before any tenant code can replace them.
    fork, waitpid, close, write = posix.fork, posix.waitpid, posix.close, posix.write
    sys.path.insert(0, _ROOT)
    if _VENV:
        sys.path.append(_VENV)
    _install_module()
    name = ""
    try:
        for name in hello["modules"]:
            __import__(name)
    except BaseException as e:
        chan.send(("{\"error\": %s}" % _json.encode_basestring_ascii(
            "importing %s failed: %s: %s" % (name, type(e).__name__, e))[:4000]).encode())
        posix._exit(1)
    threads = len(posix.listdir("/proc/self/task"))
    if threads > 1:
        chan.send(("{\"error\": \"the preloaded modules left %d threads running; a forked "
                   "call would have only one of them\"}" % threads).encode())
        posix._exit(1)
    ctx = (libc, hello["nr"], prog, hello.get("landlock"), top, devices, ctypes, _PathBeneath)
    wake_r, wake_w = posix.pipe2(posix.O_NONBLOCK | posix.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(chan.fileno(), select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    fds_space = _socket.CMSG_SPACE(4 * 4)
    children = {}
    gc = __import__("gc")
    gc.collect()
    gc.freeze()
    chan.send(b'{"ready": true}')
    while True:
        try:
            ready = poller.poll()
        except InterruptedError:
            continue
        _drain(wake_r)  # before reaping, as in `_zygote`
        while children:
            try:
                pid, status = waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            done = children.pop(pid, None)
            if done is not None:
                try:
                    write(done[0], b"s" + status.to_bytes(4, sys.byteorder, signed=True))
                except OSError:
                    pass
                close(done[0])
                _remove_tree("/tmp/.falra-call-%d" % done[1])
        if not any(fd == chan.fileno() for fd, _ in ready):
            continue
        received = _receive(chan, 4096, fds_space, _socket)
        if received is None:
            continue
        msg, fds = received
        if len(fds) != 4:
            for fd in fds:
                close(fd)
            continue
        try:
            n = int(_decode(msg)["n"])
            pid = fork()
        except BaseException as e:
            try:
                write(fds[3], ("e" + type(e).__name__).encode())
            except OSError:
                pass
            for fd in fds:
                close(fd)
            continue
        if pid == 0:
            _preload_call(fds, n, ctx)
        for fd in fds[:3]:
            close(fd)
        children[pid] = (fds[3], n)


# The most entries one call's directory removal visits: what is left past it stays, in a
# directory no later call can name (every call's number is new).
_REMOVE_AT_MOST = 20000


def _is_dir(path):
    try:
        return posix.stat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False


def _remove_tree(path):
    """Removes a call's directory, whatever the call left there, without following a symbolic
    link anywhere (each step is relative to an open directory, opened with O_NOFOLLOW), without
    recursion, within a bounded number of entries, and without ever raising: this runs in the
    zygote's loop."""
    flags = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
    try:
        top = posix.open(path, flags)
    except BaseException:
        return
    budget = _REMOVE_AT_MOST
    stack = [(top, None, None)]  # (directory fd, parent fd, name in parent)
    try:
        while stack and budget > 0:
            fd, parent, name = stack[-1]
            child = None
            try:
                posix.fchmod(fd, 0o700)
            except BaseException:
                pass
            try:
                with posix.scandir(fd) as entries:
                    for entry in entries:
                        budget -= 1
                        if budget <= 0:
                            break
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                child = entry.name
                                break
                            posix.unlink(entry.name, dir_fd=fd)
                        except BaseException:
                            pass
            except BaseException:
                pass
            if child is not None:
                try:
                    posix.chmod(child, 0o700, dir_fd=fd)
                except BaseException:
                    pass
                try:
                    stack.append((posix.open(child, flags, dir_fd=fd), fd, child))
                    continue
                except BaseException:
                    try:
                        posix.rmdir(child, dir_fd=fd)  # empty, or not ours to open
                    except BaseException:
                        pass
                    continue
            stack.pop()
            posix.close(fd)
            if parent is not None:
                try:
                    posix.rmdir(name, dir_fd=parent)
                except BaseException:
                    pass
        for fd, _, _ in stack:
            posix.close(fd)
        posix.rmdir(path)
    except BaseException:
        pass


def _preload_call(fds, n, ctx):
    """A call's process: restrict itself further, say hello, wait for the daemon, run the call."""
    import signal

    libc, nr, prog, landlock, top, devices, ctypes, path_beneath = ctx
    stdin, stdout, stderr, call = fds
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd, to in ((stdin, 0), (stdout, 1), (stderr, 2), (call, 3)):
            posix.dup2(fd, to)
        posix.closerange(4, 1 << 30)
        posix.setsid()
        tmp = "/tmp/.falra-call-%d" % n
        posix.mkdir(tmp, 0o700)
        if landlock:
            rules = [("/" + name, landlock["read_only"]) for name in top]
            rules += [(device, landlock["device_file"]) for device in devices]
            rules += [(tmp, landlock["read_write"])]
            _landlock_call(libc, nr, ctypes, landlock, rules, path_beneath)
        rc = libc.syscall(ctypes.c_long(nr["seccomp"]), ctypes.c_ulong(1), ctypes.c_ulong(0),
                          ctypes.byref(prog))
        _check(rc, ctypes)
        for key in (b"TMPDIR", b"HOME"):
            posix.environ[key] = tmp.encode()
            posix.putenv(key, tmp.encode())
        os = sys.modules.get("os")
        if os is not None:
            os.environ._data.update({b"TMPDIR": tmp.encode(), b"HOME": tmp.encode()})
        tempfile = sys.modules.get("tempfile")
        if tempfile is not None:
            tempfile.tempdir = None
        # Random generators the preloaded modules hold: reseeded per call (`random` reseeds
        # itself at fork).
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            try:
                numpy.random.seed()
            except BaseException:
                pass
        posix.write(3, b"h")  # the kernel tells the daemon who says it
        if posix.read(3, 16) != b"g":
            posix._exit(1)
        posix.close(3)
        del sys.argv[1:]  # what an exec'd interpreter's would be
    except BaseException as e:
        try:
            posix.write(3, ("e%s: %s" % (type(e).__name__, e)).encode()[:200])
        except BaseException:
            pass
        posix._exit(126)
    _main()


def _landlock_call(libc, nr, ctypes, landlock, rules, path_beneath):
    class _Attr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64),
                    ("scoped", ctypes.c_uint64)]

    if landlock["scoped"]:
        attr, size = _Attr(landlock["handled"], 0, landlock["scoped"]), ctypes.sizeof(_Attr)
    else:
        attr, size = ctypes.c_uint64(landlock["handled"]), 8
    # Directories with directory rights, device files with file rights (the zygote's lists).
    _restrict(libc, nr, ctypes, ctypes.byref(attr), size, rules, path_beneath, 0)


if len(sys.argv) == 3 and sys.argv[1] == "--zygote":
    _zygote(int(sys.argv[2]))
elif len(sys.argv) == 2 and sys.argv[1] == "--preload":
    _preload()
else:
    _main()
