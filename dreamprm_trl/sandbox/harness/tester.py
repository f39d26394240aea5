"""The test process (inside the sandbox): runs a suite's test code against the program through the proxy.

It never runs the program's code: the program's names are :class:`.remote.Handle` proxies or plain data,
modules are imported here. It writes one message per test to the supervisor, on a pipe the candidate process never
holds. Suite kinds ``call``, ``check``, ``asserts`` and ``unittest``. Standard library only.
"""

import builtins
import importlib
import marshal
import os
import sys

from . import proxy
from .remote import Handle, Remote

_STDLIB = frozenset(sys.stdlib_module_names)


def _short(exc):
    import traceback

    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[-500:]


def _classify(exc):
    if isinstance(exc, MemoryError):
        return "memory"
    if isinstance(exc, AssertionError):
        return "fail"
    return "error"


class Reporter:
    def __init__(self, fd, remote):
        self.fd, self.remote = fd, remote

    def send(self, i, result, detail="", out=None):
        if self.remote.gone and result != "ok":
            result, detail = "gone", self.remote.gone
        msg = {"i": i, "r": result, "detail": str(detail)[:500]}
        if out is not None:
            msg["out"] = out
        body = marshal.dumps(msg)
        data = len(body).to_bytes(4, "little") + body
        while data:
            data = data[os.write(self.fd, data):]

    def run(self, i, fn):
        try:
            fn()
        except proxy.CandidateGone as e:
            self.send(i, "gone", str(e))
        except SystemExit as e:
            self.send(i, "error", f"sys.exit({e.code!r}) in the tests")
        except BaseException as e:  # noqa: BLE001 - every failure is a verdict
            self.send(i, _classify(e), _short(e))
        else:
            self.send(i, "fail" if self.remote.gone else "ok", self.remote.gone)


def namespace(table, remote, suite):
    """The test code's globals: the suite's prelude, then the program's names (modules imported here, from the
    standard library or among the suite's own imports only). A program name that would shadow a builtin is left
    out (a program's ``abs`` must not judge ``abs(candidate(x) - y) < 1e-6``), unless it is the entry point."""
    ns = {"__name__": "__main__", "__builtins__": builtins}
    if suite.get("prelude") and suite["kind"] != "call":  # (call tests use only the program's entry point)
        exec(compile(suite["prelude"], "<prelude>", "exec"), ns)
    allowed = _STDLIB | set(suite.get("_modules", ()))
    for name, doc in table.items():
        name = str(name)
        if hasattr(builtins, name) and name != suite.get("entry_point"):
            continue
        if type(doc) is list and len(doc) == 2 and doc[0] == "N":  # a standard-library object: our own copy
            try:
                ns[name] = proxy.resolve_for_tests(*doc[1])
            except Exception:  # noqa: BLE001
                pass
            continue
        if type(doc) is list and len(doc) == 2 and doc[0] == "m":
            module = str(doc[1])
            if module.split(".")[0] in allowed:
                try:
                    ns[name] = importlib.import_module(module)
                except Exception:  # noqa: BLE001 - the tests will fail on the missing name
                    pass
        else:
            ns[name] = remote.decode(doc)
    return ns


def run_call(suite, ns, rep):
    import json

    fn_name = suite["fn_name"]
    solution = ns.get("Solution")

    def target():
        if isinstance(solution, Handle) and "t" in solution._flags:
            return getattr(solution(), fn_name)
        if fn_name not in ns:
            raise NameError(f"the program defines neither class Solution nor function {fn_name!r}")
        return ns[fn_name]

    for i, text in enumerate(suite["inputs"]):
        def one(i=i, text=text):
            args = [json.loads(line) for line in text.split("\n") if line.strip()]
            value = target()(*args)
            if isinstance(value, (set, frozenset)):
                value = sorted(value)
            rep.send(i, "ok", out=json.dumps(value))

        try:
            one()
        except proxy.CandidateGone as e:
            rep.send(i, "gone", str(e))
        except BaseException as e:  # noqa: BLE001 - every failure is a verdict
            rep.send(i, "memory" if isinstance(e, MemoryError) else "error", _short(e))


def run_unittest_class(ns, name):
    import unittest

    cls = ns.get(name)
    if not (isinstance(cls, type) and issubclass(cls, unittest.TestCase)):
        raise NameError(f"test class {name!r} is not defined by the test code")
    result = unittest.TestResult()
    unittest.defaultTestLoader.loadTestsFromTestCase(cls).run(result)
    for _, text in result.errors + result.failures:
        if "CandidateGone" in text:
            raise proxy.CandidateGone(text.strip().splitlines()[-1][-300:])
        if text.strip().splitlines()[-1].startswith("MemoryError"):
            raise MemoryError(text.strip().splitlines()[-1])
    if result.errors:
        raise RuntimeError(result.errors[0][1].strip().splitlines()[-1][-400:])
    if result.failures:
        raise AssertionError(result.failures[0][1].strip().splitlines()[-1][-400:])
    if result.skipped or result.expectedFailures or result.unexpectedSuccesses or not result.testsRun:
        raise AssertionError("tests were skipped or none ran")


def main(payload, req_fd, resp_fd, report_fd):
    """Entry point of the test process (already forked, limited and unprivileged)."""
    suite = payload["suite"]
    kind = suite["kind"]
    remote = Remote(req_fd, resp_fd)
    remote.plain_only = kind in ("check", "asserts")
    rep = Reporter(report_fd, remote)
    n = payload["n_tests"]
    if kind == "unittest":
        import unittest  # noqa: F401 - before the program could touch anything on disk
    try:
        table = remote.loaded()
        if isinstance(table, list):  # ["exc", ...]: the program failed while loading
            raise remote._exception(*table[0:4]) if len(table) == 4 else proxy.CandidateGone("bad load report")
        ns = namespace(table, remote, suite)
        if suite.get("setup"):
            exec(compile(suite["setup"], "<setup>", "exec"), ns)
    except proxy.CandidateGone as e:
        for i in range(n):
            rep.send(i, "gone", str(e))
        return
    except BaseException as e:  # noqa: BLE001
        for i in range(n):
            rep.send(i, "memory" if isinstance(e, MemoryError) else "error", "while loading: " + _short(e))
        return
    if kind == "call":
        run_call(suite, ns, rep)
    elif kind == "check":
        entry = suite["entry_point"]

        def run_check():
            exec(compile(suite["code"], "<tests>", "exec"), ns)
            if entry not in ns:
                raise NameError(f"the program does not define the entry point {entry!r}")
            ns["check"](ns[entry])

        rep.run(0, run_check)
    elif kind == "asserts":
        for i, text in enumerate(suite["assertions"]):
            rep.run(i, lambda text=text, i=i: exec(compile(text, f"<test {i}>", "exec"), ns))
    elif kind == "unittest":
        try:
            exec(compile(suite["code"], "<tests>", "exec"), ns)
        except BaseException as e:  # noqa: BLE001
            for i in range(n):
                rep.send(i, "error", "while loading the tests: " + _short(e))
            return
        for i, name in enumerate(suite["test_classes"]):
            rep.run(i, lambda name=name: run_unittest_class(ns, name))
