"""Code that runs inside the sandbox (``python -I -S _sandbox_harness.py REPORT_FD NONCE_FD``). Standard library only.

The *supervisor* (this script's process) never runs candidate code: it compiles the program, forks one *runner*
per stdio test (or one runner for the other suite kinds), enforces the per-test wall clock, kills every leftover
descendant (it is a child subreaper, so daemons that called ``setsid`` stay in its tree) and writes the verdicts,
prefixed by a nonce it reads only after all runners are gone, to a report fd that runners close before any
candidate code runs. Runners apply the resource limits to themselves and run the candidate code.
"""

import builtins
import marshal
import os
import resource
import select
import sys

import _signal as signal  # `signal` imports enum, which costs more than a trivial test
import time

_HEAPTYPE = 1 << 9
_SCALARS = (bool, int, float, complex, str, bytes, type(None))
_MEMORY_EXIT = 3
_FILENAME = "<solution>"


# ----------------------------------------------------------------------------------------------- plain data
class NotPlainData(TypeError):
    pass


def to_plain(value, _depth=0):
    """A fresh copy of ``value`` built from built-in types only; raises :class:`NotPlainData` otherwise.

    Subclasses of built-in types are copied through the base type's C methods (so an overridden ``__eq__`` is
    dropped), numpy values go through ``item``/``tolist``, and values of immutable built-in (static C) types such
    as ``range`` or ``Decimal`` pass unchanged. Instances of classes defined in Python are rejected.
    """
    if _depth > 200:
        raise NotPlainData("value nested deeper than 200 levels")
    t = type(value)
    if t in _SCALARS:
        return value
    d = _depth + 1
    if issubclass(t, bool):
        return bool.__bool__(value)  # pragma: no cover - bool cannot be subclassed
    if issubclass(t, int):
        return int.__index__(value)
    if issubclass(t, float):
        return float.__float__(value)
    if issubclass(t, str):
        return str.__str__(value)
    if issubclass(t, bytes):
        return bytes.__bytes__(value)
    if issubclass(t, complex):
        return complex.__complex__(value)
    if issubclass(t, tuple):
        return tuple(to_plain(v, d) for v in tuple.__iter__(value))
    if issubclass(t, list):
        return [to_plain(v, d) for v in list.__iter__(value)]
    if issubclass(t, dict):
        return {to_plain(k, d): to_plain(v, d) for k, v in dict.items(value)}
    if issubclass(t, frozenset):
        return frozenset(to_plain(v, d) for v in frozenset.__iter__(value))
    if issubclass(t, set):
        return {to_plain(v, d) for v in set.__iter__(value)}
    np = sys.modules.get("numpy")
    if np is not None and t.__module__ == "numpy" and not t.__flags__ & _HEAPTYPE:
        if t is np.ndarray:
            return to_plain(value.tolist(), d)
        if isinstance(value, np.generic):
            return to_plain(value.item(), d)
    if not t.__flags__ & _HEAPTYPE:
        if hasattr(t, "__next__"):
            return (to_plain(v, d) for v in value)
        return value
    raise NotPlainData(f"returned a value of type {t.__module__}.{t.__qualname__}, which is not plain data")


def plain_returns(fn):
    """Wrap a candidate callable so that its return value is converted by :func:`to_plain`."""

    def wrapper(*args, **kwargs):
        return to_plain(fn(*args, **kwargs))

    for attr in ("__name__", "__qualname__", "__doc__"):
        try:
            setattr(wrapper, attr, getattr(fn, attr))
        except (AttributeError, TypeError):
            pass
    wrapper.__wrapped__ = fn
    return wrapper


def _test_namespace(ns, names):
    """A copy of the program's namespace for the test code, its callables wrapped by :func:`plain_returns`.
    The program's own functions keep calling each other unwrapped (recursion depth and speed unchanged)."""
    test_ns = dict(ns)
    for name in names:
        value = ns.get(name)
        if callable(value) and not isinstance(value, type) and type(value).__name__ != "module":
            test_ns[name] = plain_returns(value)
    return test_ns


_COMPARISONS = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__", "__contains__")


def _suspect(value, _depth=0):
    """True when ``value`` holds an instance of a class defined by the program that defines its own comparison
    or truth dunders: such objects may not decide an assertion."""
    t = type(value)
    if t in _SCALARS or _depth > 50:
        return False
    if t.__flags__ & _HEAPTYPE and t.__module__ == "__candidate__":
        if any(n in vars(base) for base in t.__mro__[:-1] for n in _COMPARISONS if base.__module__ == "__candidate__"):
            return True
    if issubclass(t, (list, tuple, set, frozenset)):
        return any(_suspect(v, _depth + 1) for v in t.__iter__(value))
    if issubclass(t, dict):
        return any(_suspect(k, _depth + 1) or _suspect(v, _depth + 1) for k, v in dict.items(value))
    return False


def _guard_unittest(unittest):
    """Make every ``TestCase.assert*`` refuse operands whose comparison the program itself defines."""

    def guard(method):
        def guarded(self, *args, **kwargs):
            for arg in args[:2]:
                if _suspect(arg):
                    raise NotPlainData(f"{type(arg).__qualname__} defines its own comparison; compare plain data")
            return method(self, *args, **kwargs)

        guarded.__name__ = method.__name__
        return guarded

    for name, value in list(vars(unittest.TestCase).items()):
        if name.startswith("assert") and callable(value) and name != "assertRaises":
            setattr(unittest.TestCase, name, guard(value))


# ----------------------------------------------------------------------------------------------- runner side
def _write_msg(fd, obj):
    body = marshal.dumps(obj)
    data = len(body).to_bytes(4, "little") + body
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _limit(payload, n_tests):
    mem = int(payload["memory_mb"]) * 1024 * 1024
    cpu = int(payload["timeout"] * max(1, n_tests)) + 2
    cap = int(payload["max_output_bytes"])
    for res, value in (
        (resource.RLIMIT_AS, mem),
        (resource.RLIMIT_DATA, mem),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_FSIZE, cap),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            pass


def _runner_setup(payload, keep_fds, n_tests):
    """In a fresh fork: drop the supervisor's fds, restore signals, apply limits."""
    for fd in payload["_close_fds"]:
        if fd not in keep_fds:
            try:
                os.close(fd)
            except OSError:
                pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _limit(payload, n_tests)
    uid = payload.get("uid")
    if uid is not None:  # a throw-away uid: RLIMIT_NPROC then bounds fork bombs (root is exempt from it)
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (payload["max_procs"], payload["max_procs"]))
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        except OSError as e:
            os.write(2, f"sandbox: could not drop privileges: {e}\n".encode())
            os._exit(71)
    if uid is not None or not _PIDNS:
        try:
            _prctl(4, 1)  # PR_SET_DUMPABLE: the runner is an ordinary process (/dev/stdin works)
        except Exception:
            pass


def _exit_runner(code):
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def _missing_module(exc, suite_modules):
    """Name of a module the suite itself imports that is not installed, else None."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.split(".")[0]
        if top in suite_modules and top not in sys.stdlib_module_names:
            return top
    return None


def _classify(exc):
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, AssertionError):
        return "fail"
    return "error"


def _short(exc):
    import traceback

    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text[-500:]


def _run_stdio_child(code_obj, payload, in_fd, out_fd):
    _runner_setup(payload, {in_fd, out_fd}, 1)
    os.dup2(in_fd, 0)
    os.dup2(out_fd, 1)
    os.close(in_fd)
    os.close(out_fd)
    status = 0
    try:
        exec(code_obj, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as e:
        status = 0 if e.code in (None, 0) else 1
        if status and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except MemoryError:
        status = _MEMORY_EXIT
    except BaseException:
        import traceback

        traceback.print_exc(limit=-3)
        status = 1
    _exit_runner(status)


def _run_tests_child(code_obj, payload, msg_fd):
    """One runner for call/check/asserts/unittest suites; one JSON message per test on ``msg_fd``."""
    suite = payload["suite"]
    kind = suite["kind"]
    n = payload["n_tests"]
    _runner_setup(payload, {msg_fd}, n)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    suite_modules = set(payload["suite_modules"])
    builtins_snapshot = dict(vars(builtins))
    if kind == "unittest":  # guard, then snapshot, the assertion machinery before any candidate code runs
        import unittest

        _guard_unittest(unittest)
        case_snapshot = dict(vars(unittest.TestCase))
    ns = {"__name__": "__candidate__", "__builtins__": builtins}

    def send(i, result, detail="", out=None):
        msg = {"i": i, "r": result, "detail": detail}
        if out is not None:
            msg["out"] = out
        _write_msg(msg_fd, msg)

    def fail_all(result, detail):
        for i in range(n):
            send(i, result, detail)
        _exit_runner(0)

    try:
        exec(code_obj, ns)
        candidate_names = [k for k in ns if not k.startswith("__")]
        if suite.get("setup"):
            exec(compile(suite["setup"], "<setup>", "exec"), ns)
    except SystemExit as e:
        fail_all("error", f"program called sys.exit({e.code!r}) while loading")
    except BaseException as e:  # noqa: BLE001 - every failure is a verdict
        missing = _missing_module(e, suite_modules)
        if missing:
            fail_all("skipped", f"module {missing!r} needed by the tests is not installed")
        fail_all(_classify(e) if not isinstance(e, AssertionError) else "error", "while loading: " + _short(e))
    tampered = [k for k, v in builtins_snapshot.items() if vars(builtins).get(k) is not v]
    if tampered:
        vars(builtins).update(builtins_snapshot)
        fail_all("fail", f"program modified builtins {tampered[:5]}")

    def guarded(i, fn):
        try:
            fn()
        except SystemExit as e:
            send(i, "error", f"sys.exit({e.code!r}) during the test")
        except BaseException as e:  # noqa: BLE001
            missing = _missing_module(e, suite_modules)
            if missing:
                send(i, "skipped", f"module {missing!r} needed by the tests is not installed")
            else:
                send(i, _classify(e), _short(e))
        else:
            tampered = [k for k, v in builtins_snapshot.items() if vars(builtins).get(k) is not v]
            if tampered:
                send(i, "fail", f"program modified builtins {tampered[:5]}")
            else:
                send(i, "ok")

    if kind == "call":
        import json

        fn_name = suite["fn_name"]
        if "Solution" in ns and isinstance(ns["Solution"], type):
            def target():
                return getattr(ns["Solution"](), fn_name)
        else:
            def target():
                if fn_name not in ns:
                    raise NameError(f"the program defines neither class Solution nor function {fn_name!r}")
                return ns[fn_name]
        for i, text in enumerate(suite["inputs"]):
            def one(i=i, text=text):
                args = [json.loads(line) for line in text.split("\n") if line.strip()]
                value = to_plain(target()(*args))
                if isinstance(value, (set, frozenset)):
                    value = sorted(value)
                send(i, "ok", out=json.dumps(value))

            try:
                one()
            except SystemExit as e:
                send(i, "error", f"sys.exit({e.code!r}) during the test")
            except BaseException as e:  # noqa: BLE001
                send(i, _classify(e) if not isinstance(e, AssertionError) else "error", _short(e))
    elif kind == "check":
        entry = suite["entry_point"]

        def run_check():
            exec(compile(suite["code"], "<tests>", "exec"), ns)
            if entry not in ns:
                raise NameError(f"the program does not define the entry point {entry!r}")
            ns["check"](plain_returns(ns[entry]))

        guarded(0, run_check)
    elif kind == "asserts":
        test_ns = _test_namespace(ns, candidate_names)
        for i, text in enumerate(suite["assertions"]):
            guarded(i, lambda text=text: exec(compile(text, f"<test {i}>", "exec"), test_ns))
    elif kind == "unittest":
        try:
            exec(compile(suite["code"], "<tests>", "exec"), ns)
        except BaseException as e:  # noqa: BLE001
            missing = _missing_module(e, suite_modules)
            if missing:
                fail_all("skipped", f"module {missing!r} needed by the tests is not installed")
            fail_all("error", "while loading the tests: " + _short(e))
        for i, name in enumerate(suite["test_classes"]):
            def run_case(name=name):
                cls = ns.get(name)
                if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
                    raise NameError(f"test class {name!r} is not defined by the test code")
                result = unittest.TestResult()
                unittest.defaultTestLoader.loadTestsFromTestCase(cls).run(result)
                changed = [k for k, v in case_snapshot.items() if vars(unittest.TestCase).get(k) is not v]
                if changed:
                    raise AssertionError(f"program modified unittest.TestCase {changed[:5]}")
                problems = result.errors + result.failures
                for _, text in problems:
                    last = text.strip().splitlines()[-1] if text.strip() else ""
                    if "MemoryError" in last:
                        raise MemoryError(last)
                    missing_name = last.split("'")[1] if last.startswith("ModuleNotFoundError") and "'" in last else ""
                    if missing_name and missing_name.split(".")[0] in suite_modules:
                        raise ModuleNotFoundError(last, name=missing_name)
                if result.errors:
                    raise RuntimeError(result.errors[0][1].strip().splitlines()[-1][-400:])
                if result.failures:
                    raise AssertionError(result.failures[0][1].strip().splitlines()[-1][-400:])
                if result.skipped or result.expectedFailures or result.unexpectedSuccesses or not result.testsRun:
                    raise AssertionError("tests were skipped or none ran")

            guarded(i, run_case)
    _exit_runner(0)


# ----------------------------------------------------------------------------------------------- supervisor
_LIBC = []


def _prctl(option, value):
    if not _LIBC:
        import ctypes

        _LIBC.append((ctypes, ctypes.CDLL(None, use_errno=True)))
    ctypes, libc = _LIBC[0]
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")


def _children():
    if _PIDNS:  # inside bubblewrap's PID namespace everything but pid 1 (bwrap) and us is a descendant
        me = os.getpid()
        return {int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me) and not _zombie(p)}
    pids = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.update(int(p) for p in f.read().split())
        except OSError:
            pass
    return pids


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return True


_PIDNS = False


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_descendants(deadline_s=3.0):
    """SIGKILL every descendant: orphans are re-parented to us (child subreaper), so loop until none is left."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        kids = _children()
        if not kids:
            _reap()
            return True
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in kids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return not _children()


def _wait(pid, deadline, fd=None, on_data=None):
    """Wait for ``pid`` until ``deadline()``, feeding bytes read from ``fd`` to ``on_data`` (which returns False to
    stop). Returns the wait status, or None when the deadline passed first. Once the process has exited the pipe
    is drained without blocking: a descendant holding its write end cannot stall us."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    status = None
    try:
        while True:
            if status is None and pidfd is None:
                done, raw = os.waitpid(pid, os.WNOHANG)
                if done:
                    status = raw
            if status is not None:
                if fd is not None:
                    os.set_blocking(fd, False)
                    try:
                        while (data := os.read(fd, 1 << 16)) and on_data(data):
                            pass
                    except BlockingIOError:
                        pass
                return status
            left = deadline() - time.monotonic()
            if left <= 0:
                return None
            watch = [f for f in (pidfd, fd) if f is not None]
            ready, _, _ = select.select(watch, [], [], left if pidfd is not None else min(left, 0.02))
            if fd is not None and fd in ready:
                data = os.read(fd, 1 << 16)
                if not data:
                    fd = None
                elif not on_data(data):
                    return None
            if pidfd is not None and pidfd in ready:
                _, status = os.waitpid(pid, 0)
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _describe(status):
    if status is None:
        return "time limit exceeded"
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    code = os.WEXITSTATUS(status)
    return f"exit code {code}" if code else ""


def _exit_kind(status):
    if status is None:
        return "timeout"
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return "timeout"
        if sig == signal.SIGXFSZ:
            return "output_limit"
        return "error"
    code = os.WEXITSTATUS(status)
    return {0: "ok", _MEMORY_EXIT: "memory"}.get(code, "error")


def supervise_stdio(code_obj, payload):
    results = []
    cap = int(payload["max_output_bytes"])
    total = 0
    for i, text in enumerate(payload["suite"]["inputs"]):
        in_fd = os.memfd_create("stdin")
        data = text.encode()
        view = memoryview(data)
        while view:
            view = view[os.write(in_fd, view):]
        os.lseek(in_fd, 0, os.SEEK_SET)
        out_fd = os.memfd_create("stdout")
        sys.stdout.flush()
        sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                _run_stdio_child(code_obj, payload, in_fd, out_fd)
            finally:
                os._exit(70)
        os.close(in_fd)
        status = _wait(pid, lambda: start + payload["timeout"])
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        kill_descendants()
        size = os.fstat(out_fd).st_size
        os.lseek(out_fd, 0, os.SEEK_SET)
        out = os.read(out_fd, min(size, cap - total + 1)) if size else b""
        os.close(out_fd)
        total += len(out)
        kind = _exit_kind(status)
        if size >= cap or total > cap:
            kind = "output_limit"
        entry = {"i": i, "r": kind, "t": round(time.monotonic() - start, 4), "detail": _describe(status)}
        if kind in ("ok", "error"):
            entry["out"] = out.decode("utf-8", "replace")
        results.append(entry)
        if kind in ("timeout", "output_limit", "memory"):
            break
    return results


def supervise_tests(code_obj, payload):
    n = payload["n_tests"]
    cap = int(payload["max_output_bytes"])
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    payload["_close_fds"].append(r)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _run_tests_child(code_obj, payload, w)
        finally:
            os._exit(70)
    os.close(w)
    results = []
    state = {"buffer": b"", "size": 0, "last": start, "over": False, "bad": False}

    def on_data(data):
        state["size"] += len(data)
        if state["size"] > cap:
            state["over"] = True
            return False
        state["buffer"] += data
        buf = state["buffer"]
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "little"):
            size = int.from_bytes(buf[:4], "little")
            body, buf = buf[4 : 4 + size], buf[4 + size :]
            state["buffer"] = buf
            try:
                msg = marshal.loads(body)
                if not isinstance(msg, dict) or msg.get("i") != len(results) or len(results) >= n:
                    raise ValueError
            except (ValueError, EOFError, TypeError):
                state["bad"] = True
                return False
            entry = {"i": msg["i"], "r": str(msg.get("r")), "detail": str(msg.get("detail", ""))[:500]}
            if "out" in msg:
                entry["out"] = str(msg["out"])
            entry["t"] = round(time.monotonic() - state["last"], 4)
            results.append(entry)
            state["last"] = time.monotonic()  # every test gets its own `timeout`
        return True

    status = _wait(pid, lambda: state["last"] + payload["timeout"], r, on_data)
    os.close(r)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    kill_descendants()
    if state["over"]:
        results.append({"i": len(results), "r": "output_limit", "detail": "test reports exceeded the output cap"})
    elif state["bad"]:
        results.append({"i": len(results), "r": "error", "detail": "malformed report from the test process"})
    elif len(results) < n:
        kind = "timeout" if status is None else _exit_kind(status)
        detail = "the program ended the test process before all tests reported" if kind == "ok" else _describe(status)
        results.append({"i": len(results), "r": "error" if kind == "ok" else kind, "detail": detail})
    return results[:n]


def _suite_modules(suite):
    import ast

    mods = set()
    for text in (suite.get("setup") or "", suite.get("code") or "", *suite.get("assertions", ())):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                mods.add(node.module.split(".")[0])
    return sorted(mods)


_ESCAPES = {i: f"\\u{i:04x}" for i in range(32)}
_ESCAPES.update({ord("\\"): "\\\\", ord('"'): '\\"', 0x7F: "\\u007f", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def _json(obj):
    """Minimal JSON encoder for the flat report records (importing json costs more than running a test)."""
    if isinstance(obj, dict):
        return "{" + ", ".join(_json(str(k)) + ": " + _json(v) for k, v in obj.items()) + "}"
    if isinstance(obj, str):
        return '"' + obj.encode("utf-8", "replace").decode("utf-8").translate(_ESCAPES) + '"'
    if obj is True or obj is False or obj is None:
        return {True: "true", False: "false", None: "null"}[obj]
    if isinstance(obj, (int, float)):
        return repr(obj)
    return _json(str(obj))


def main():
    report_fd, nonce_fd = int(sys.argv[1]), int(sys.argv[2])
    with os.fdopen(0, "rb", closefd=False) as f:
        payload = marshal.loads(f.read())
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    for path in payload.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)
    global _PIDNS
    _PIDNS = bool(payload.get("pidns")) and os.getpid() == 2
    if not _PIDNS:  # (bubblewrap drops the capabilities that ptrace or /proc/<pid>/fd would need)
        try:
            _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphaned descendants stay ours to kill
            _prctl(4, 0)  # PR_SET_DUMPABLE=0: runners cannot open our /proc entries or ptrace us
        except Exception:
            pass
    if payload.get("uid") is not None and not _LIBC:
        try:
            _prctl(38, 0)  # PR_GET_NO_NEW_PRIVS: loads libc once, before the runners fork
        except Exception:
            pass
    payload["_close_fds"] = [report_fd, nonce_fd]
    suite = payload["suite"]
    payload["suite_modules"] = _suite_modules(suite) if suite["kind"] != "stdio" else []
    start = time.monotonic()
    try:
        code_obj = compile(payload["code"], _FILENAME, "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        results = [{"i": 0, "r": "syntax", "detail": _short(e)}]
    else:
        if suite["kind"] == "stdio":
            results = supervise_stdio(code_obj, payload)
        else:
            results = supervise_tests(code_obj, payload)
    clean = kill_descendants()
    nonce = os.read(nonce_fd, 128).decode().strip()
    os.close(nonce_fd)
    lines = [_json({"nonce": nonce, **r}) for r in results]
    lines.append(_json({"nonce": nonce, "done": True, "clean": clean, "t": round(time.monotonic() - start, 4)}))
    data = ("\n".join(lines) + "\n").encode()
    while data:
        data = data[os.write(report_fd, data):]
    os.close(report_fd)


if __name__ == "__main__":
    main()
