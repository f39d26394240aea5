"""The supervisor's entry point inside the sandbox (``python -I -S -c "import _sandbox_harness.main ..."``,
arguments ``REPORT_FD NONCE_FD``, the payload on stdin). Standard library only.

The *supervisor* (this process) never runs candidate code. It compiles the program, skips suites whose tests
import a module that is not installed, then runs the program (:mod:`.supervise`). It is a child subreaper, so
daemons that called ``setsid`` stay in its tree, and it kills every leftover descendant (:mod:`.procs`) before it
writes the verdicts, prefixed by a nonce it reads only after all children are gone, to a report fd that no child
holds.
"""

import marshal
import os
import sys
import time

from . import procs
from .supervise import short, supervise_stdio, supervise_tests

_FILENAME = "<solution>"


def _suite_modules(suite):
    import ast

    mods = set()
    for text in (suite.get("prelude") or "", suite.get("setup") or "", suite.get("code") or "", *suite.get("assertions", ())):
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


def _missing_modules(modules):
    """Top-level modules the tests import that cannot be found (found without running any of their code)."""
    import importlib.util

    missing = []
    for name in modules:
        if name in sys.stdlib_module_names or name in sys.builtin_module_names:
            continue
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


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


def _read_payload():
    with os.fdopen(0, "rb", closefd=False) as f:
        payload = marshal.loads(f.read())
    procs.null_stdin()
    for path in payload.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)
    return payload


def _become_supervisor(payload):
    """Keep orphans (subreaper) and stay out of the runners' reach; load libc before any fork that needs it."""
    procs.PIDNS = bool(payload.get("pidns")) and os.getpid() == 2
    if not procs.PIDNS:  # (bubblewrap drops the capabilities that ptrace or /proc/<pid>/fd would need)
        try:
            procs.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphaned descendants stay ours to kill
            procs.prctl(4, 0)  # PR_SET_DUMPABLE=0: runners cannot open our /proc entries or ptrace us
        except Exception:
            pass
    if payload.get("uid") is not None and not procs._LIBC:
        try:
            procs.prctl(38, 0)  # PR_GET_NO_NEW_PRIVS: loads libc once, before the runners fork
        except Exception:
            pass


def _results(payload):
    """One record per test run (or one per test when the suite is skipped, one for a syntax error)."""
    suite = payload["suite"]
    suite["_modules"] = _suite_modules(suite) if suite["kind"] != "stdio" else []
    missing = _missing_modules(suite["_modules"])
    try:
        code_obj = compile(payload["code"], _FILENAME, "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        code_obj, syntax = None, e
    if missing:  # decided before the program runs, from the tests' own imports only
        detail = f"module {missing[0]!r} imported by the tests is not installed"
        return [{"i": i, "r": "skipped", "detail": detail} for i in range(payload["n_tests"])]
    if code_obj is None:
        return [{"i": 0, "r": "syntax", "detail": short(syntax)}]
    if suite["kind"] == "stdio":
        return supervise_stdio(code_obj, payload)
    return supervise_tests(code_obj, payload)


def main():
    report_fd, nonce_fd = int(sys.argv[1]), int(sys.argv[2])
    payload = _read_payload()
    _become_supervisor(payload)
    payload["_close_fds"] = [report_fd, nonce_fd]
    start = time.monotonic()
    results = _results(payload)
    clean = procs.kill_descendants()
    nonce = os.read(nonce_fd, 128).decode().strip()
    os.close(nonce_fd)
    lines = [_json({"nonce": nonce, **r}) for r in results]
    lines.append(_json({"nonce": nonce, "done": True, "clean": clean, "t": round(time.monotonic() - start, 4)}))
    data = ("\n".join(lines) + "\n").encode()
    while data:
        data = data[os.write(report_fd, data):]
    os.close(report_fd)
